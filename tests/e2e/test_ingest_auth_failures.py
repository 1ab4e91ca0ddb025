"""Requests that fail authentication, counted per client address, against real ingest (`icc ingest`).

Up to the limit they are answered 401 (or 413) and kept in the quarantine; beyond it, until the
window ends, 429 with Retry-After and nothing is kept. A sender that authenticates is never refused
by it, from whatever address. The address is the connection's peer; X-Forwarded-For counts only
from a proxy named in ICC_TRUSTED_PROXIES.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from shared.auth import API_KEY_HEADER, SOURCE_HEADER
from tests.e2e.ingest_support import Ingest, admin_json, encounter, ingest_only, new_id, now_iso, post
from tests.hl7_samples import adt, signed_headers

pytestmark = pytest.mark.e2e

LIMIT = 3
WINDOW_SECONDS = 3600  # no window ends while the tests run
PROXY = "127.0.0.2"  # a loopback address of its own: connections from it are the trusted proxy's
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_only(
        pg_admin_url,
        tmp_path_factory.mktemp("ingest-auth-failures"),
        ICC_AUTH_FAILURE_LIMIT=str(LIMIT),
        ICC_AUTH_FAILURE_WINDOW_SECONDS=str(WINDOW_SECONDS),
        ICC_TRUSTED_PROXIES=PROXY,
    ) as running:
        yield running


@pytest.fixture
async def via_proxy() -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections come from the trusted proxy's address."""
    transport = httpx.AsyncHTTPTransport(local_address=PROXY)
    async with httpx.AsyncClient(transport=transport, timeout=30) as c:
        yield c


def milestone() -> dict[str, Any]:
    return {
        "milestone": "arrival",
        "site_id": "RXN01",
        "attendance_id": new_id("A"),
        "mode": "walk_in",
        "occurred_at": now_iso(),
    }


async def unauthenticated(
    client: httpx.AsyncClient,
    ingest: Ingest,
    endpoint: str = "/v1/ed-events",
    content_type: str = "application/json",
    forwarded_for: str | None = None,
) -> httpx.Response:
    """A request with a wrong API key (a misconfigured sender)."""
    headers = {"content-type": content_type, SOURCE_HEADER: "ed", API_KEY_HEADER: "not-the-key"}
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    return await client.post(ingest.url + endpoint, content=orjson.dumps(milestone()), headers=headers)


async def kept(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM quarantine"))


async def failing_now(client: httpx.AsyncClient, ingest: Ingest) -> dict[str, Any]:
    return await admin_json(client, ingest, "/v1/auth-failures")


async def test_failures_from_one_address_are_kept_up_to_the_limit_then_refused_and_not_kept(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    before = await kept(conn)
    # X-Forwarded-For from a peer that is not a trusted proxy is not believed: one address throughout
    first = [await unauthenticated(client, ingest, forwarded_for=f"203.0.113.{n}") for n in range(LIMIT)]
    assert [r.status_code for r in first] == [401] * LIMIT
    assert await kept(conn) == before + LIMIT

    over = await unauthenticated(client, ingest, forwarded_for="203.0.113.99")
    assert over.status_code == 429, over.text
    assert over.headers["content-type"] == "application/problem+json"
    assert over.json()["type"].endswith("/too-many-auth-failures")
    assert 0 < int(over.headers["retry-after"]) <= WINDOW_SECONDS
    # on every interface, in its own format
    fhir = await unauthenticated(client, ingest, "/v1/pas/fhir", FHIR)
    assert fhir.status_code == 429 and fhir.headers["retry-after"].isdigit()
    assert [i["code"] for i in fhir.json()["issue"]] == ["throttled"]
    hl7 = await unauthenticated(client, ingest, "/v1/pas/hl7v2", "x-application/hl7-v2+er7")
    assert hl7.status_code == 429 and hl7.headers["content-type"] == "application/problem+json"
    assert await kept(conn) == before + LIMIT  # nothing more kept

    # senders that authenticate, from the same address, are taken as ever
    taken = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, milestone())
    assert taken.status_code == 202, taken.text
    resource = encounter(new_id("enc-").lower(), "in-progress")
    fhir_taken = await post(
        client, f"{ingest.url}/v1/pas/fhir", ingest.secrets, resource, source="pas", content_type=FHIR
    )
    assert fhir_taken.status_code == 200, fhir_taken.text
    raw = adt("A08", new_id("AUTH")).encode()
    hl7_taken = await client.post(
        f"{ingest.url}/v1/pas/hl7v2",
        content=raw,
        headers=signed_headers(ingest.secrets.webhook_secrets["pas"], raw),
    )
    assert hl7_taken.status_code == 200, hl7_taken.text

    # what was refused is counted, and an admin can see who is failing
    listed = await failing_now(client, ingest)
    (local,) = [i for i in listed["items"] if i["address"] == "127.0.0.1"]
    assert (local["failures"], local["refused"]) == (LIMIT, 3)
    assert listed["refused_total"] >= 3 and listed["limit"] == LIMIT


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_count(
    ingest: Ingest, conn: asyncpg.Connection, via_proxy: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    before = await kept(conn)
    statuses = [
        (await unauthenticated(via_proxy, ingest, forwarded_for="198.51.100.1")).status_code for _ in range(4)
    ]
    assert statuses == [401] * LIMIT + [429]
    # another client behind the proxy is not held back by the first; the proxy's own address is not counted
    other = await unauthenticated(via_proxy, ingest, forwarded_for="198.51.100.2")
    assert other.status_code == 401
    assert await kept(conn) == before + LIMIT + 1

    listed = {i["address"]: i for i in (await failing_now(client, ingest))["items"]}
    assert (listed["198.51.100.1"]["failures"], listed["198.51.100.1"]["refused"]) == (LIMIT, 1)
    assert listed["198.51.100.2"]["failures"] == 1 and PROXY not in listed


async def test_a_body_too_large_to_authenticate_counts_as_a_failure(
    ingest: Ingest, conn: asyncpg.Connection, via_proxy: httpx.AsyncClient
) -> None:
    before = await kept(conn)
    headers = {"content-type": "application/json", "x-forwarded-for": "198.51.100.3"}
    too_large = b"x" * (ingest.stack.settings.max_body_bytes + 1)
    url = f"{ingest.url}/v1/ed-events"

    async def send() -> int:
        return (await via_proxy.post(url, content=too_large, headers=headers)).status_code

    assert [await send() for _ in range(LIMIT)] == [413] * LIMIT
    after_refusals = await kept(conn)  # identical refusals may share one row
    assert after_refusals > before
    assert await send() == 429
    assert await kept(conn) == after_refusals
