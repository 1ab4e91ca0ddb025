"""ED milestones and bed management JSON, single and NDJSON, against real ingest, PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.auth import API_KEY_HEADER, SOURCE_HEADER, Role
from tests.e2e.ingest_support import (
    NHS_NUMBER,
    Ingest,
    ingest_only,
    ingest_only_async,
    new_id,
    now_iso,
    post,
)
from tests.helpers import opened, token

pytestmark = pytest.mark.e2e

SITE = "RXN01"


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_only(pg_admin_url, tmp_path_factory.mktemp("ingest-json")) as running:
        yield running


async def outbox_envelopes(conn: asyncpg.Connection, event_ids: list[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT topic, key, value FROM outbox WHERE event_id = any($1::uuid[]) ORDER BY id",
        [uuid.UUID(i) for i in event_ids],
    )
    return [{"topic": r["topic"], "key": r["key"], **orjson.loads(r["value"])} for r in rows]


def milestone(name: str, attendance: str, **fields: Any) -> dict[str, Any]:
    return {
        "milestone": name,
        "site_id": SITE,
        "attendance_id": attendance,
        "occurred_at": now_iso(),
        "patient": {"nhs_number": NHS_NUMBER, "mrn": "MRN0042"},
        **fields,
    }


async def test_each_ed_milestone_becomes_its_event_on_the_edflow_topic(
    ingest: Ingest, conn: asyncpg.Connection
) -> None:
    attendance = new_id("ATT")
    arrived_at = datetime.now(UTC) - timedelta(minutes=50)
    handed_over = arrived_at + timedelta(minutes=42)
    sent = [
        (
            milestone(
                "arrival",
                attendance,
                mode="ambulance",
                ambulance={
                    "handover_id": new_id("AMB"),
                    "arrived_at": arrived_at.isoformat(),
                    "handover_at": handed_over.isoformat(),
                },
            ),
            ["ed.arrived", "ambulance.arrived", "ambulance.handed_over"],
        ),
        (milestone("initial_assessment", attendance, acuity=2), ["ed.assessed"]),
        (milestone("seen_for_treatment", attendance), ["ed.seen"]),
        (milestone("decision_to_admit", attendance, specialty="cardiology"), ["ed.decision_to_admit"]),
        (milestone("clinically_ready_to_proceed", attendance), ["ed.clinically_ready"]),
        (milestone("conclusion", attendance), ["ed.concluded"]),
        (milestone("departure", attendance, disposition="admitted"), ["ed.departed"]),
    ]
    answers = []
    async with httpx.AsyncClient() as client:
        for body, expected in sent:
            response = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, body)
            assert response.status_code == 202, response.text
            answer = response.json()
            answers.append(answer)
            assert answer["duplicate"] is False
            envelopes = await outbox_envelopes(conn, answer["event_ids"])
            assert [e["event_type"] for e in envelopes] == expected
            assert {(e["topic"], e["key"], e["site_id"]) for e in envelopes} == {
                ("icc.edflow.v1", SITE, SITE)
            }
            first = envelopes[0]["payload"]
            assert (
                first["attendance_id"].startswith("att:") and attendance not in orjson.dumps(first).decode()
            )
            assert first["patient_id"].startswith("nhs:")
            if expected[0] == "ed.arrived":
                ambulance, handover = envelopes[1], envelopes[2]
                assert envelopes[0]["payload"]["mode"] == "ambulance"
                assert ambulance["payload"]["attendance_id"] == first["attendance_id"]
                assert datetime.fromisoformat(ambulance["occurred_at"]) == arrived_at
                assert datetime.fromisoformat(handover["occurred_at"]) == handed_over
                assert datetime.fromisoformat(handover["payload"]["arrived_at"]) == arrived_at
            if expected == ["ed.assessed"]:
                assert first["acuity"] == 2
            if expected == ["ed.decision_to_admit"]:
                assert first["specialty"] == "cardiology"
            if expected == ["ed.departed"]:
                assert first["disposition"] == "admitted"

        # the same milestone again: the same answer, marked duplicate, and no new event
        again = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, sent[0][0])
        assert again.status_code == 202
        assert again.json()["duplicate"] is True
        assert again.json()["event_ids"] == answers[0]["event_ids"]
    assert (
        await conn.fetchval("SELECT count(*) FROM outbox WHERE value::text LIKE '%' || $1 || '%'", NHS_NUMBER)
        == 0
    )


async def test_snomed_acuity_codes_map_to_levels(ingest: Ingest, conn: asyncpg.Connection) -> None:
    expected = {
        "1064891000000107": 1,
        "1064911000000105": 2,
        "1064901000000108": 3,
        "1077241000000103": 4,
        "1077251000000100": 5,
    }
    async with httpx.AsyncClient() as client:
        for code, level in expected.items():
            response = await post(
                client,
                f"{ingest.url}/v1/ed-events",
                ingest.secrets,
                milestone("initial_assessment", new_id("ATT"), acuity=code),
            )
            assert response.status_code == 202, response.text
            (envelope,) = await outbox_envelopes(conn, response.json()["event_ids"])
            assert envelope["payload"]["acuity"] == level, code
        unknown = await post(
            client,
            f"{ingest.url}/v1/ed-events",
            ingest.secrets,
            milestone("initial_assessment", new_id("ATT"), acuity="1077231000000107"),
        )
        assert unknown.status_code == 422
        assert [e["field"] for e in unknown.json()["errors"]] == ["acuity"]


async def test_ndjson_batch_commits_good_lines_and_quarantines_the_bad_one(
    ingest: Ingest, conn: asyncpg.Connection
) -> None:
    lines = [milestone("arrival", new_id("ATT"), mode="walk-in") for _ in range(5)]
    lines[2] = {**lines[2], "milestone": "teleported"}
    lines[4] = {**lines[4], "site_id": "NOWHERE"}
    async with httpx.AsyncClient() as client:
        response = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, lines)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [o["status"] for o in answer["lines"]] == [
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == (3, 0, 2)
    assert answer["lines"][2]["problem"]["errors"][0]["field"] == "milestone"
    assert answer["lines"][4]["problem"]["type"].endswith("/unknown-site")
    good_ids = [i for o in answer["lines"] if o["status"] == "accepted" for i in o["event_ids"]]
    assert len(await outbox_envelopes(conn, good_ids)) == 3
    # the good lines went in as one raw message; each bad line is kept alone, as sent
    raw_count = await conn.fetchval(
        "SELECT event_count FROM raw_message WHERE endpoint = '/v1/ed-events' ORDER BY id DESC LIMIT 1"
    )
    assert raw_count == 3
    for outcome, line in ((answer["lines"][2], lines[2]), (answer["lines"][4], lines[4])):
        kept = await conn.fetchrow(
            "SELECT body, content_type FROM quarantine WHERE id = $1", outcome["quarantine_id"]
        )
        assert orjson.loads(opened(ingest.secrets, kept["body"])) == line
        assert kept["content_type"] == "application/json"

    async with httpx.AsyncClient() as client:
        again = await post(client, f"{ingest.url}/v1/ed-events", ingest.secrets, lines)
    assert [o["status"] for o in again.json()["lines"]] == [
        "duplicate",
        "duplicate",
        "rejected",
        "duplicate",
        "rejected",
    ]


async def test_bed_management_actions(ingest: Ingest, conn: asyncpg.Connection) -> None:
    def action(name: str, bed: str, **extra: Any) -> dict[str, Any]:
        ward = "-".join(bed.split("-")[:2])
        return {
            "action": name,
            "site_id": "RXN01",
            "ward_id": ward,
            "bed_id": bed,
            "occurred_at": now_iso(),
            **extra,
        }

    cases = [
        (action("close_bed", "RXN01-WD10-B1-1"), "bed.status_changed", {"status": "closed"}),
        (action("open_bed", "RXN01-WD10-B1-1"), "bed.status_changed", {"status": "unoccupied"}),
        (action("housekeeping", "RXN01-WD10-B1-2"), "bed.status_changed", {"status": "housekeeping"}),
        (action("isolate", "RXN01-WD10-SR1-1"), "bed.status_changed", {"status": "isolated"}),
        (
            action("isolate", "RXN01-WD10-SR2-1", contaminated=True),
            "bed.status_changed",
            {"status": "contaminated"},
        ),
        (action("open_escalation_bed", "RXN01-WD10-ESC-1"), "bed.status_changed", {"status": "unoccupied"}),
        (action("close_escalation_bed", "RXN01-WD10-ESC-1"), "bed.status_changed", {"status": "closed"}),
        (action("ncr_flag", "RXN01-WD10-B2-1"), "bed.ncr_changed", {"no_criteria_to_reside": True}),
        (action("ncr_unflag", "RXN01-WD10-B2-1"), "bed.ncr_changed", {"no_criteria_to_reside": False}),
    ]
    url = f"{ingest.url}/v1/bed-management"
    async with httpx.AsyncClient() as client:
        for body, event_type, expected in cases:
            response = await post(client, url, ingest.secrets, body, source="bedmgmt")
            assert response.status_code == 202, (body, response.text)
            (envelope,) = await outbox_envelopes(conn, response.json()["event_ids"])
            assert (envelope["topic"], envelope["key"], envelope["event_type"]) == (
                "icc.beds.v1",
                "RXN01",
                event_type,
            )
            assert envelope["payload"]["bed_id"] == body["bed_id"]
            assert {k: envelope["payload"][k] for k in expected} == expected

        core = await post(
            client, url, ingest.secrets, action("open_escalation_bed", "RXN01-WD10-B1-3"), source="bedmgmt"
        )
        assert core.status_code == 422
        assert core.json()["type"].endswith("/not-an-escalation-bed")
        assert core.json()["errors"][0]["field"] == "action"
        escalation = await post(
            client, url, ingest.secrets, action("open_bed", "RXN01-WD10-ESC-2"), source="bedmgmt"
        )
        assert escalation.status_code == 422 and escalation.json()["type"].endswith("/escalation-bed")
        unknown = await post(
            client, url, ingest.secrets, action("close_bed", "RXN01-WD10-B9-9"), source="bedmgmt"
        )
        assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "bed_id"

        batch = [action("close_bed", "RXN01-WD11-B1-1"), action("open_escalation_bed", "RXN01-WD11-B1-2")]
        response = await post(client, url, ingest.secrets, batch, source="bedmgmt")
        assert [o["status"] for o in response.json()["lines"]] == ["accepted", "rejected"]
    statuses = await conn.fetch(
        "SELECT problem->>'type' AS type FROM quarantine WHERE endpoint = '/v1/bed-management' ORDER BY id"
    )
    assert [s["type"].rsplit("/", 1)[1] for s in statuses] == [
        "not-an-escalation-bed",
        "escalation-bed",
        "unknown-location",
        "not-an-escalation-bed",
    ]


async def test_api_key_authenticates_a_source(ingest: Ingest, conn: asyncpg.Connection) -> None:
    body = milestone("seen_for_treatment", new_id("ATT"))
    url = f"{ingest.url}/v1/ed-events"
    async with httpx.AsyncClient() as client:
        with_key = await post(client, url, ingest.secrets, body, source="ed", api_key=True)
        assert with_key.status_code == 202, with_key.text
        (envelope,) = await outbox_envelopes(conn, with_key.json()["event_ids"])
        assert envelope["source"] == "ed"

        wrong = await client.post(
            url,
            content=orjson.dumps(body),
            headers={"content-type": "application/json", API_KEY_HEADER: "guess"},
        )
        assert wrong.status_code == 401 and wrong.headers["content-type"] == "application/problem+json"
        # a real key, but of another source than the one claimed
        mismatch = await client.post(
            url,
            content=orjson.dumps(body),
            headers={
                "content-type": "application/json",
                SOURCE_HEADER: "ed",
                API_KEY_HEADER: ingest.secrets.api_keys["bedmgmt"],
            },
        )
        assert mismatch.status_code == 401
        assert "does not belong" in mismatch.json()["detail"]
        # the key alone names its source
        alone = await client.post(
            url,
            content=orjson.dumps(milestone("conclusion", new_id("ATT"))),
            headers={"content-type": "application/json", API_KEY_HEADER: ingest.secrets.api_keys["pas"]},
        )
        assert alone.status_code == 202
        (envelope,) = await outbox_envelopes(conn, alone.json()["event_ids"])
        assert envelope["source"] == "pas"

        admin = token(ingest.secrets, Role.admin, "system:QXN")
        listed = await client.get(f"{ingest.url}/v1/quarantine", headers={"Authorization": f"Bearer {admin}"})
        assert [i["status_code"] for i in listed.json()["items"][:2]] == [401, 401]


async def test_published_records_carry_pseudonyms_only(ingest: Ingest, conn: asyncpg.Connection) -> None:
    attendance = new_id("ATT")
    async with httpx.AsyncClient() as client:
        response = await post(
            client,
            f"{ingest.url}/v1/ed-events",
            ingest.secrets,
            milestone("decision_to_admit", attendance, specialty="stroke medicine"),
        )
    event_id = response.json()["event_id"]
    consumer = AIOKafkaConsumer(bootstrap_servers=ingest.broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition("icc.edflow.v1", p) for p in consumer.partitions_for_topic("icc.edflow.v1") or []
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[Any] = []
        async with asyncio.timeout(30):
            while not found:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    found += [r for r in records if orjson.loads(r.value)["event_id"] == event_id]
    finally:
        await consumer.stop()
    (record,) = found
    text = record.value.decode()
    assert record.key == b"RXN01"
    assert NHS_NUMBER not in text and "MRN0042" not in text and attendance not in text
    assert orjson.loads(record.value)["payload"]["patient_id"].startswith("nhs:")


async def test_rate_limit_answers_429_with_retry_after(pg_admin_url: str, tmp_path: Path) -> None:
    async with ingest_only_async(
        pg_admin_url, tmp_path, ICC_RATE_LIMIT_PER_SECOND="0.2", ICC_RATE_LIMIT_BURST="2"
    ) as running:
        url = f"{running.url}/v1/ed-events"
        async with httpx.AsyncClient() as client:
            codes = []
            for _ in range(3):
                response = await post(client, url, running.secrets, milestone("conclusion", new_id("ATT")))
                codes.append(response.status_code)
            assert codes == [202, 202, 429]
            assert response.headers["content-type"] == "application/problem+json"
            assert 1 <= int(response.headers["retry-after"]) <= 5
            assert response.json()["type"].endswith("/rate-limited")
            # another source has its own bucket
            other = await post(
                client, f"{running.url}/v1/bed-management", running.secrets, b"{}", source="bedmgmt"
            )
            assert other.status_code == 422
            # the FHIR endpoint answers the same refusal as an OperationOutcome
            await post(client, f"{running.url}/v1/pas/fhir", running.secrets, b"{}", source="pas")
            await post(client, f"{running.url}/v1/pas/fhir", running.secrets, b"{}", source="pas")
            fhir = await post(
                client,
                f"{running.url}/v1/pas/fhir",
                running.secrets,
                b"{}",
                source="pas",
                content_type="application/fhir+json",
            )
            assert fhir.status_code == 429 and "retry-after" in fhir.headers
            assert fhir.json()["resourceType"] == "OperationOutcome"
            assert fhir.json()["issue"][0]["code"] == "throttled"


async def _logged(log: Path, marker: str) -> str:
    """The service's log once it holds `marker` (lines are written as requests are answered)."""
    for _ in range(50):
        text = await asyncio.to_thread(log.read_text, errors="replace")
        if marker in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{marker} never reached {log}")


async def _probe(client: httpx.AsyncClient, running: Ingest) -> tuple[str, str]:
    """One request taken (202) and one refused (401, unsigned), each marked in its query string."""
    taken, refused = new_id("TAKEN"), new_id("REFUSED")
    url = f"{running.url}/v1/ed-events"
    ok = await post(client, f"{url}?probe={taken}", running.secrets, milestone("conclusion", new_id("ATT")))
    bad = await client.post(
        f"{url}?probe={refused}",
        content=b"{}",
        headers={"content-type": "application/json", SOURCE_HEADER: "ed"},
    )
    assert (ok.status_code, bad.status_code) == (202, 401)
    return taken, refused


async def test_the_access_log_keeps_refused_requests_only_by_default(ingest: Ingest) -> None:
    async with httpx.AsyncClient() as client:
        taken, refused = await _probe(client, ingest)
    text = await _logged(ingest.stack.data_dir / "logs" / "ingest.log", refused)
    assert f'/v1/ed-events?probe={refused} HTTP/1.1" 401' in text
    assert taken not in text  # written before the refused one, so it would be there by now


async def test_the_access_log_keeps_every_request_when_asked(pg_admin_url: str, tmp_path: Path) -> None:
    async with ingest_only_async(pg_admin_url, tmp_path, ICC_ACCESS_LOG="all") as running:
        async with httpx.AsyncClient() as client:
            taken, refused = await _probe(client, running)
        text = await _logged(running.stack.data_dir / "logs" / "ingest.log", refused)
    assert f'/v1/ed-events?probe={taken} HTTP/1.1" 202' in text
