"""The ICB feed on the real stack: pressure in JSON, FHIR and EDXL-HAVE with ETags, the CSV export,
and signed pushes to real HTTP receivers on loopback, one healthy and one failing."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.measurereport import MeasureReport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from icc.embedded import Broker, free_port
from icc.stack import Stack
from services.feeds.edxl_have import HAVE_NS
from shared.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Role, sign_webhook
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3


@pytest.fixture
def feeds_stack(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Iterator[Stack]:
    settings = make_settings(
        tmp_path,
        database_url,
        broker.bootstrap,
        secrets_file,
        ICC_FEEDS_POLL_SECONDS=0.2,
        ICC_FEEDS_MAX_ATTEMPTS=MAX_ATTEMPTS,
        ICC_FEEDS_RETRY_BASE_SECONDS=0.4,
        ICC_FEEDS_DELIVERY_TIMEOUT_SECONDS=3.0,
    )
    stack = Stack(settings)
    stack.start_infrastructure()
    stack.start_services()
    yield stack
    stack.stop()


def auth(secrets: Secrets, role: Role, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(secrets, role, scope)}"}


async def system_reported(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, Any] | None:
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    view = response.json()
    return view if view["reported"] and all(s["reported"] for s in view["sites"]) else None


async def test_pressure_in_every_format_with_etags(feeds_stack: Stack, test_secrets: Secrets) -> None:
    feeds = feeds_stack.url_of("feeds")
    analyst = auth(test_secrets, Role.icb_analyst, "system:QXN")
    async with httpx.AsyncClient(timeout=30) as client:
        for bed in ("RXN01-ITU-B1-1", "RXN01-AMU-B1-1", "RXN02-W1-B1-1"):
            posted = await post_signed(
                client,
                f"{feeds_stack.url_of('ingest')}/v1/bed-events",
                test_secrets,
                bed_event(bed, "occupied"),
            )
            assert posted.status_code == 202, posted.text
        url = f"{feeds}/v1/systems/QXN/pressure"

        async def occupied() -> dict[str, Any] | None:
            view = await system_reported(client, url, analyst)
            return view if view and view["beds"]["occupied"] == 3 else None

        view = await eventually(occupied, timeout=60)
        assert view["system_id"] == "QXN" and view["opel"]["effective_level"] in (1, 2, 3, 4, None)
        assert view["beds"]["critical_care"]["occupied"] == 1
        assert view["escalations"]["source_available"] is True
        rxn01 = next(s for s in view["sites"] if s["site_id"] == "RXN01")
        assert "breakdown" in rxn01["opel"]

        first = await client.get(url, headers=analyst)
        assert first.headers["cache-control"].startswith("private, max-age=")
        tag = first.headers["etag"]
        again = await client.get(url, headers={**analyst, "If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag

        fhir = await client.get(url, params={"format": "fhir"}, headers=analyst)
        assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
        assert fhir.headers["etag"] != tag
        bundle = Bundle.model_validate(fhir.json())
        assert bundle.entry is not None and len(bundle.entry) == 3  # the system and its two sites
        system_report = fhir.json()["entry"][0]["resource"]
        counts = {p["code"]["coding"][0]["code"]: p["count"] for p in system_report["group"][0]["population"]}
        assert counts["numBedsOcc"] == 3 and counts["numICUBedsOcc"] == 1 and counts["numTotBeds"] == 562

        site_fhir = await client.get(
            f"{feeds}/v1/sites/RXN01/pressure", headers={**analyst, "Accept": "application/fhir+json"}
        )
        assert MeasureReport.model_validate(site_fhir.json()).subject is not None

        edxl = await client.get(url, params={"format": "edxl"}, headers=analyst)
        assert edxl.status_code == 200 and "xml" in edxl.headers["content-type"]
        root = ET.fromstring(edxl.content)
        assert root.tag == f"{{{HAVE_NS}}}HospitalStatus" and len(root) == 2
        edxl_304 = await client.get(
            url, params={"format": "edxl"}, headers={**analyst, "If-None-Match": edxl.headers["etag"]}
        )
        assert edxl_304.status_code == 304

        # a change makes a new ETag
        await post_signed(
            client,
            f"{feeds_stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event("RXN02-W1-B1-2", "occupied"),
        )

        async def changed() -> bool:
            response = await client.get(url, headers={**analyst, "If-None-Match": tag})
            return response.status_code == 200

        assert await eventually(changed, timeout=60)

        csv_response = await client.get(f"{feeds}/v1/systems/QXN/export.csv", headers=analyst)
        assert csv_response.status_code == 200 and csv_response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(csv_response.text)))
        assert rows and {"scope", "at", "opel_computed_level", "opel_declared_level"} <= set(rows[0])
        assert {r["scope"] for r in rows} >= {"site:RXN01", "site:RXN02"}

        # scopes: a site's token sees its site only, never the system or another site
        manager = auth(test_secrets, Role.site_manager, "site:RXN02")
        assert (await client.get(f"{feeds}/v1/sites/RXN02/pressure", headers=manager)).status_code == 200
        assert (await client.get(f"{feeds}/v1/sites/RXN01/pressure", headers=manager)).status_code == 403
        assert (await client.get(url, headers=manager)).status_code == 403
        assert (await client.get(f"{feeds}/v1/systems/QXZ/pressure", headers=analyst)).status_code == 404
        assert (await client.get(url)).status_code == 401


@dataclass
class Receiver:
    """A real HTTP endpoint on loopback that records what it is sent."""

    status: int = 200
    delay: float = 0.0
    received: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: Request) -> Response:
        self.received.append((time.monotonic(), dict(request.headers), await request.body()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(status_code=self.status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    receiver.port = free_port()
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=receiver.port, log_level="warning"))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=10, interval=0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


async def test_signed_pushes_retry_and_dead_letter_without_delaying_others(
    feeds_stack: Stack, test_secrets: Secrets
) -> None:
    feeds = feeds_stack.url_of("feeds")
    ingest = f"{feeds_stack.url_of('ingest')}/v1/bed-events"
    analyst = auth(test_secrets, Role.icb_analyst, "system:QXN")
    async with (
        serving(Receiver()) as healthy,
        serving(Receiver(status=500, delay=1.0)) as failing,
        httpx.AsyncClient(timeout=30) as client,
    ):
        nurse = auth(test_secrets, Role.ward_nurse, "ward:RXN01-AMU")
        refused = await client.post(
            f"{feeds}/v1/feeds/subscriptions", json={"system_id": "QXN", "url": healthy.url}, headers=nurse
        )
        assert refused.status_code == 403
        created = {}
        for name, receiver in (("healthy", healthy), ("failing", failing)):
            response = await client.post(
                f"{feeds}/v1/feeds/subscriptions",
                json={"system_id": "QXN", "url": receiver.url, "cadence": "on_change"},
                headers=analyst,
            )
            assert response.status_code == 201, response.text
            created[name] = response.json()
        listed = (await client.get(f"{feeds}/v1/feeds/subscriptions", headers=analyst)).json()["items"]
        assert {s["id"] for s in listed} == {c["id"] for c in created.values()}
        assert all("secret" not in s for s in listed)

        assert (
            await post_signed(client, ingest, test_secrets, bed_event("RXN01-AMU-B1-1", "occupied"))
        ).status_code == 202
        await eventually(lambda: _at_least(healthy, 1), timeout=60)

        # the failing receiver is tried MAX_ATTEMPTS times for its first message, then it is dead-lettered
        await eventually(lambda: _at_least(failing, MAX_ATTEMPTS), timeout=30)
        log_url = f"{feeds}/v1/feeds/subscriptions/{created['failing']['id']}/deliveries"

        async def dead() -> dict[str, Any] | None:
            items = (await client.get(log_url, headers=analyst)).json()["items"]
            first = items[-1] if items else None
            return first if first and first["status"] == "dead" else None

        dead_letter = await eventually(dead, timeout=30)
        assert dead_letter["attempts"] == MAX_ATTEMPTS
        assert [a["status_code"] for a in dead_letter["attempt_log"]] == [500] * MAX_ATTEMPTS
        first_ids = {h["x-icc-delivery"] for _, h, _ in failing.received[:MAX_ATTEMPTS]}
        assert first_ids == {dead_letter["id"]}
        assert [h["x-icc-attempt"] for _, h, _ in failing.received[:MAX_ATTEMPTS]] == ["1", "2", "3"]
        gaps = [b[0] - a[0] for a, b in zip(failing.received, failing.received[1:MAX_ATTEMPTS], strict=False)]
        assert all(gap >= 0.2 for gap in gaps)  # backed off between attempts

        # while the failing one is being retried, the healthy one gets each change promptly
        for n in range(2, 6):
            before = len(healthy.received)
            sent = time.monotonic()
            bed = f"RXN01-AMU-B1-{n}"
            assert (
                await post_signed(client, ingest, test_secrets, bed_event(bed, "occupied"))
            ).status_code == 202
            await eventually(lambda before=before: _at_least(healthy, before + 1), timeout=20)
            assert healthy.received[-1][0] - sent < 5, healthy.received[-1][0] - sent
        # and some of those arrived while the failing receiver was still holding a request open
        assert any(
            f <= h <= f + failing.delay for h, _, _ in healthy.received for f, _, _ in failing.received
        )

        for _, headers, body in healthy.received:
            expected = sign_webhook(
                created["healthy"]["secret"], body, int(headers[TIMESTAMP_HEADER.lower()])
            )
            assert headers[SIGNATURE_HEADER.lower()] == expected[SIGNATURE_HEADER]
            payload = orjson.loads(body)
            assert payload["type"] == "system.pressure" and payload["pressure"]["system_id"] == "QXN"
            assert headers["x-icc-subscription"] == created["healthy"]["id"]
        healthy_log = (
            await client.get(
                f"{feeds}/v1/feeds/subscriptions/{created['healthy']['id']}/deliveries", headers=analyst
            )
        ).json()["items"]
        assert {d["status"] for d in healthy_log} == {"delivered"}
        assert all(d["attempts"] == 1 for d in healthy_log)

        deleted = await client.delete(
            f"{feeds}/v1/feeds/subscriptions/{created['healthy']['id']}", headers=analyst
        )
        assert deleted.status_code == 200


async def _at_least(receiver: Receiver, count: int) -> bool:
    return len(receiver.received) >= count
