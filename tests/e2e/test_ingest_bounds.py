"""What ingest bounds, end to end: event times on every interface (far ahead of receipt, or before
1990, are refused and quarantined), and how much it keeps of a request that fails authentication."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from shared.auth import API_KEY_HEADER, SOURCE_HEADER
from tests.e2e.ingest_support import Ingest, admin_headers, encounter, ingest_only, new_id, post
from tests.helpers import opened
from tests.hl7_samples import adt, evn, npu, segments_of

pytestmark = pytest.mark.e2e

SKEW_SECONDS = 600  # above the default: what ingest allows must come from its setting
FAR_FUTURE = datetime(2205, 1, 1, 12, 0, tzinfo=UTC)
TOO_EARLY = datetime(1989, 12, 31, 12, 0, tzinfo=UTC)
HL7 = "x-application/hl7-v2+er7"
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_only(
        pg_admin_url, tmp_path_factory.mktemp("ingest-bounds"), ICC_MAX_FUTURE_SKEW_SECONDS=str(SKEW_SECONDS)
    ) as running:
        yield running


# ── event times ─────────────────────────────────────────────────────────────────────────────


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Interface:
    """How to close bed AMU B1-1 (or the nearest thing the interface says) at a time, and how its
    refusal names the field the time was sent in."""

    endpoint: str
    source: str
    content_type: str
    body: Callable[[datetime], bytes]
    names_the_field: Callable[[httpx.Response], bool]


def _hl7_bed_closed(at: datetime) -> bytes:
    recorded = at.strftime("%Y%m%d%H%M%S") + "+0000"
    message = adt("A20", new_id("T"), npu("AMU^B1^1^RXN01", "C"))
    return message.replace(evn("A20"), evn("A20", recorded)).encode()


def _hl7_names_evn_2(response: httpx.Response) -> bool:
    segments = segments_of(response.content)
    return segments["MSA"][0][1] == "AE" and segments["ERR"][0][1].split("^")[:3] == ["EVN", "1", "2"]


def _fhir_admitted(at: datetime) -> bytes:
    return orjson.dumps(encounter(new_id("enc-").lower(), "in-progress", period={"start": iso(at)}))


def _fhir_names_period_start(response: httpx.Response) -> bool:
    (issue,) = response.json()["issue"]
    return bool(issue["code"] == "value" and issue["expression"] == ["Encounter.period.start"])


def _json_names_occurred_at(response: httpx.Response) -> bool:
    problem = response.json()
    return response.headers["content-type"] == "application/problem+json" and problem["errors"] == [
        {"field": "occurred_at", "message": problem["errors"][0]["message"]}
    ]


BED = {"site_id": "RXN01", "ward_id": "RXN01-AMU", "bed_id": "RXN01-AMU-B1-1"}
INTERFACES = {
    "hl7v2": Interface("/v1/pas/hl7v2", "pas", HL7, _hl7_bed_closed, _hl7_names_evn_2),
    "fhir": Interface("/v1/pas/fhir", "pas", FHIR, _fhir_admitted, _fhir_names_period_start),
    "ed-events": Interface(
        "/v1/ed-events",
        "ed",
        "application/json",
        lambda at: orjson.dumps(
            {
                "milestone": "arrival",
                "site_id": "RXN01",
                "attendance_id": new_id("A"),
                "mode": "walk_in",
                "occurred_at": iso(at),
            }
        ),
        _json_names_occurred_at,
    ),
    "bed-management": Interface(
        "/v1/bed-management",
        "bedmgmt",
        "application/json",
        lambda at: orjson.dumps({"action": "close_bed", **BED, "occurred_at": iso(at)}),
        _json_names_occurred_at,
    ),
    "bed-events": Interface(
        "/v1/bed-events",
        "bedmgmt",
        "application/json",
        lambda at: orjson.dumps({**BED, "status": "closed", "occurred_at": iso(at)}),
        _json_names_occurred_at,
    ),
}


@pytest.mark.parametrize("name", list(INTERFACES))
async def test_an_impossible_event_time_is_refused_naming_the_field_and_quarantined(
    name: str, ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    interface = INTERFACES[name]
    url = ingest.url + interface.endpoint

    async def send(at: datetime) -> tuple[bytes, httpx.Response]:
        body = interface.body(at)
        sent = await post(
            client, url, ingest.secrets, body, source=interface.source, content_type=interface.content_type
        )
        return body, sent

    events_before = await conn.fetchval("SELECT count(*) FROM outbox")
    for at in (FAR_FUTURE, TOO_EARLY):
        body, refused = await send(at)
        assert refused.status_code == 422, refused.text
        assert interface.names_the_field(refused), refused.text
        kept = await conn.fetchrow(
            "SELECT body, status_code FROM quarantine WHERE endpoint = $1 ORDER BY id DESC LIMIT 1",
            interface.endpoint,
        )
        assert (opened(ingest.secrets, kept["body"]), kept["status_code"]) == (body, 422)
    assert await conn.fetchval("SELECT count(*) FROM outbox") == events_before

    # a clock ahead by minutes is drift, not an error: within the setting (and beyond its default)
    _, taken = await send(datetime.now(UTC) + timedelta(minutes=8))
    assert taken.status_code in (200, 202), taken.text
    assert await conn.fetchval("SELECT count(*) FROM outbox") > events_before


async def test_one_ndjson_line_with_an_impossible_time_is_refused_alone(
    ingest: Ingest, client: httpx.AsyncClient
) -> None:
    lines = [
        {"milestone": "arrival", "site_id": "RXN01", "attendance_id": new_id("A"), "mode": "walk_in"}
        for _ in range(2)
    ]
    lines[0]["occurred_at"] = iso(datetime.now(UTC))
    lines[1]["occurred_at"] = iso(FAR_FUTURE)
    response = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, lines)
    assert response.status_code == 202, response.text
    first, second = response.json()["lines"]
    assert first["status"] == "accepted"
    assert second["line"] == 2 and second["status"] == "rejected"
    assert second["problem"]["errors"][0]["field"] == "occurred_at" and "quarantine_id" in second


# ── requests that fail authentication ──────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("endpoint", "content_type"),
    [("/v1/ed-events", "application/json"), ("/v1/pas/fhir", FHIR), ("/v1/pas/hl7v2", HL7)],
)
async def test_an_unauthenticated_body_is_kept_only_in_part_with_its_length_and_digest(
    endpoint: str, content_type: str, ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    url = ingest.url + endpoint
    big = b'{"filler": "' + b"x" * 200_000 + b'"}'
    small = b'{"milestone": "arrival"}'
    headers = {"content-type": content_type, SOURCE_HEADER: "ed", API_KEY_HEADER: "not-the-key"}
    ids = []
    for body in (big, small):
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == 401, response.text
        ids.append(await conn.fetchval("SELECT max(id) FROM quarantine WHERE endpoint = $1", endpoint))
    rows = await conn.fetch(
        "SELECT body, body_length, body_sha256, body_truncated FROM quarantine WHERE id = any($1) "
        "ORDER BY id",
        ids,
    )
    assert [(opened(ingest.secrets, r["body"]), *list(r.values())[1:]) for r in rows] == [
        (big[:4096], len(big), hashlib.sha256(big).digest(), True),
        (small, len(small), hashlib.sha256(small).digest(), False),
    ]

    admin = admin_headers(ingest)
    listed = (await client.get(f"{ingest.url}/v1/quarantine?limit=500", headers=admin)).json()["items"]
    item: dict[str, Any] = next(i for i in listed if i["id"] == ids[0])
    assert (item["size"], item["body_truncated"], item["body_sha256"]) == (
        len(big),
        True,
        hashlib.sha256(big).hexdigest(),
    )
    replay = await client.post(f"{ingest.url}/v1/quarantine/{ids[0]}/replay", headers=admin)
    assert replay.status_code == 409 and replay.json()["type"].endswith("/not-replayable")
