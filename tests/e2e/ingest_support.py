"""Ingest on its own (no command-centre or gateway): enough for the webhook interfaces, quicker to start.

The outbox relay runs inside ingest, so published records can still be read from the broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from icc.embedded import Broker, free_port
from icc.stack import Stack
from shared.auth import API_KEY_HEADER, SOURCE_HEADER, Role, sign_webhook
from shared.secrets_store import Secrets, load_or_create
from tests.conftest import _create_database, make_settings
from tests.helpers import token
from tests.hl7_samples import signed_headers


@dataclass
class Ingest:
    stack: Stack
    database_url: str
    secrets: Secrets
    broker: Broker

    @property
    def url(self) -> str:
        return self.stack.url_of("ingest")


@contextmanager
def ingest_only(pg_admin_url: str, tmp: Path, **env: str) -> Iterator[Ingest]:
    database_url = _create_database(pg_admin_url)
    broker = Broker(free_port(), tmp / "broker.log").start()
    secrets_file = tmp / "secrets.json"
    secrets = load_or_create(secrets_file)  # generated per run, never committed
    stack = Stack(make_settings(tmp, database_url, broker.bootstrap, secrets_file))
    try:
        stack.start_infrastructure()
        stack.start_service("ingest", **env)
        stack.wait_ready("ingest")
        yield Ingest(stack, database_url, secrets, broker)
    finally:
        stack.stop()
        broker.stop()


@asynccontextmanager
async def ingest_only_async(pg_admin_url: str, tmp: Path, **env: str) -> AsyncIterator[Ingest]:
    """The same, from inside a running event loop (starting blocks: it runs in a thread)."""
    manager = ingest_only(pg_admin_url, tmp, **env)
    running = await asyncio.to_thread(manager.__enter__)
    try:
        yield running
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def post(
    client: httpx.AsyncClient,
    url: str,
    secrets: Secrets,
    body: dict[str, Any] | list[dict[str, Any]] | bytes,
    *,
    source: str = "ed",
    content_type: str = "application/json",
    api_key: bool = False,
) -> httpx.Response:
    """Post signed (HMAC) or with the source's API key; a list becomes NDJSON."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, list):
        raw = b"\n".join(orjson.dumps(line) for line in body) + b"\n"
        content_type = "application/x-ndjson"
    else:
        raw = orjson.dumps(body)
    headers = {"content-type": content_type, SOURCE_HEADER: source}
    if api_key:
        headers[API_KEY_HEADER] = secrets.api_keys[source]
    else:
        headers.update(sign_webhook(secrets.webhook_secrets[source], raw))
    return await client.post(url, content=raw, headers=headers)


def now_iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat()


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


NHS_NUMBER = "9434765919"  # a valid check digit; fictional test value


def encounter(
    resource_id: str,
    status: str,
    *,
    version: str | None = "1",
    klass: str = "IMP",
    location: str | None = "AMU^B1^1^RXN01",
    nhs_number: str = NHS_NUMBER,
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": resource_id,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
        "identifier": [{"system": "https://trust.example/visit", "value": f"V-{resource_id}"}],
        "subject": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number},
            "display": "Ada Testpatient",
        },
        "period": {"start": "2026-11-26T08:00:00Z"},
    }
    if version is not None:
        resource["meta"] = {"versionId": version, "lastUpdated": now_iso()}
    if location is not None:
        resource["location"] = [{"location": {"identifier": {"value": location}}, "status": "active"}]
    resource.update(extra)
    return resource


def bundle(kind: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"Encounter/{r.get('id', '')}"}}
            for r in resources
        ],
    }


def admin_headers(ingest: Ingest) -> dict[str, str]:
    """Headers of an admin of the sample system (quarantine, stats, auth failures)."""
    return {"Authorization": f"Bearer {token(ingest.secrets, Role.admin, 'system:QXN')}"}


async def admin_json(client: httpx.AsyncClient, ingest: Ingest, path: str) -> dict[str, Any]:
    """GET an admin endpoint of ingest and its JSON answer (200 expected)."""
    response = await client.get(f"{ingest.url}{path}", headers=admin_headers(ingest))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_hl7(client: httpx.AsyncClient, ingest: Ingest, body: str) -> httpx.Response:
    """An HL7 v2 message posted signed by the `pas` source."""
    raw = body.encode()
    return await client.post(
        f"{ingest.url}/v1/pas/hl7v2",
        content=raw,
        headers=signed_headers(ingest.secrets.webhook_secrets["pas"], raw),
    )
