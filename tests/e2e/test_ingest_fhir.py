"""FHIR R4 Encounters and Bundles from a PAS, and replaying a quarantined one after a mapping fix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from shared.auth import Role
from tests.e2e.ingest_support import (
    NHS_NUMBER,
    Ingest,
    admin_headers,
    bundle,
    encounter,
    ingest_only,
    new_id,
    post,
)
from tests.helpers import opened, token

pytestmark = pytest.mark.e2e

FHIR_JSON = "application/fhir+json"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


@pytest.fixture(scope="module")
def map_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("location-map") / "location-map.yaml"  # not there yet


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory, map_file: Path) -> Iterator[Ingest]:
    with ingest_only(
        pg_admin_url, tmp_path_factory.mktemp("ingest-fhir"), ICC_LOCATION_MAP_FILE=str(map_file)
    ) as running:
        yield running


async def send(client: httpx.AsyncClient, ingest: Ingest, body: dict[str, Any] | bytes) -> httpx.Response:
    return await post(
        client, f"{ingest.url}/v1/pas/fhir", ingest.secrets, body, source="pas", content_type=FHIR_JSON
    )


def event_ids(outcome: dict[str, Any]) -> list[str]:
    info = next(i for i in outcome["issue"] if i["severity"] == "information")
    return [e["valueUuid"].removeprefix("urn:uuid:") for e in info.get("extension", [])]


def outcome_code(outcome: dict[str, Any]) -> str:
    info = next(i for i in outcome["issue"] if i["severity"] == "information")
    return str(info["details"]["coding"][0]["code"])


async def envelopes(conn: asyncpg.Connection, ids: list[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT topic, key, value FROM outbox WHERE event_id = any($1::uuid[]) ORDER BY id",
        [uuid.UUID(i) for i in ids],
    )
    return [{"topic": r["topic"], "key": r["key"], **orjson.loads(r["value"])} for r in rows]


async def test_every_inpatient_status_drives_its_event(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    rid = new_id("enc-").lower()
    steps = [
        (
            encounter(
                rid,
                "planned",
                version="1",
                location=None,
                serviceProvider={"identifier": {"system": ODS, "value": "RXN01"}},
            ),
            ["patient.preadmitted"],
        ),
        (encounter(rid, "in-progress", version="2"), ["patient.admitted"]),
        (encounter(rid, "in-progress", version="3", location="WD10^B2^3^RXN01"), ["patient.transferred"]),
        (encounter(rid, "in-progress", version="4", location="WD10^B2^3^RXN01"), []),
        (encounter(rid, "onleave", version="5", location="WD10^B2^3^RXN01"), ["patient.leave"]),
        (encounter(rid, "in-progress", version="6", location="WD10^B2^3^RXN01"), ["patient.leave"]),
        (
            encounter(
                rid,
                "finished",
                version="7",
                location="WD10^B2^3^RXN01",
                hospitalization={"dischargeDisposition": {"coding": [{"code": "exp"}]}},
            ),
            ["patient.discharged"],
        ),
    ]
    found: list[dict[str, Any]] = []
    for resource, expected in steps:
        response = await send(client, ingest, resource)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_JSON)
        assert response.headers["etag"] == f'W/"{resource["meta"]["versionId"]}"'
        got = await envelopes(conn, event_ids(response.json()))
        assert [e["event_type"] for e in got] == expected, resource["status"]
        assert outcome_code(response.json()) == ("accepted" if expected else "no-change")
        found += got
    preadmitted, admitted, transferred, leave, back, discharged = found
    assert preadmitted["payload"]["location"] is None
    assert admitted["payload"]["location"] == {
        "ward_id": "RXN01-AMU",
        "bed_id": "RXN01-AMU-B1-1",
        "pas_code": "AMU^B1^1^RXN01",
    }
    assert transferred["payload"]["previous"]["bed_id"] == "RXN01-AMU-B1-1"
    assert transferred["payload"]["location"]["bed_id"] == "RXN01-WD10-B2-3"
    assert (leave["payload"]["state"], back["payload"]["state"]) == ("started", "ended")
    assert discharged["payload"]["reason"] == "died"
    assert discharged["payload"]["location"]["ward_id"] == "RXN01-WD10"
    assert {e["topic"] for e in found} == {"icc.beds.v1"} and {e["key"] for e in found} == {"RXN01"}
    assert len({e["entity_id"] for e in found}) == 1 and found[0]["entity_id"].startswith("enc:")
    assert found[0]["payload"]["patient_id"].startswith("nhs:")

    for status in ("cancelled", "entered-in-error"):
        other = new_id("enc-").lower()
        assert (await send(client, ingest, encounter(other, "in-progress", version="1"))).status_code == 200
        response = await send(client, ingest, encounter(other, status, version="2"))
        (cancelled,) = await envelopes(conn, event_ids(response.json()))
        assert cancelled["event_type"] == "patient.admission_cancelled"

    ambulatory = await send(client, ingest, encounter(new_id("enc-").lower(), "in-progress", klass="AMB"))
    assert outcome_code(ambulatory.json()) == "ignored" and event_ids(ambulatory.json()) == []


async def test_emergency_encounter_drives_ed_events(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    rid = new_id("ed-").lower()
    ed = "ED^^^RXN01"
    acuity = {"coding": [{"system": "http://snomed.info/sct", "code": "1064911000000105"}]}
    steps = [
        (encounter(rid, "arrived", version="1", klass="EMER", location=ed), ["ed.arrived"]),
        (encounter(rid, "triaged", version="2", klass="EMER", location=ed, priority=acuity), ["ed.assessed"]),
        (
            encounter(rid, "in-progress", version="3", klass="EMER", location="AMU^B3^2^RXN01"),
            ["patient.admitted"],
        ),
        (encounter(rid, "finished", version="4", klass="EMER", location="AMU^B3^2^RXN01"), ["ed.departed"]),
    ]
    found = []
    for resource, expected in steps:
        response = await send(client, ingest, resource)
        assert response.status_code == 200, response.text
        got = await envelopes(conn, event_ids(response.json()))
        assert [e["event_type"] for e in got] == expected
        found += got
    arrived, assessed, admitted, departed = found
    assert arrived["topic"] == "icc.edflow.v1" and arrived["key"] == "RXN01"
    assert assessed["payload"]["acuity"] == 2
    assert admitted["topic"] == "icc.beds.v1" and admitted["payload"]["from_ed"] is True
    assert arrived["payload"]["attendance_id"] == departed["payload"]["attendance_id"]
    # triaged straight away: arrival and assessment together
    direct = await send(
        client,
        ingest,
        encounter(new_id("ed-").lower(), "triaged", klass="EMER", location=ed, priority=acuity),
    )
    assert [e["event_type"] for e in await envelopes(conn, event_ids(direct.json()))] == [
        "ed.arrived",
        "ed.assessed",
    ]


async def test_repost_of_a_version_gives_the_same_answer_and_no_event(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    resource = encounter(new_id("enc-").lower(), "in-progress", version="7", location="WD11^B1^1^RXN01")
    first = await send(client, ingest, resource)
    before = await conn.fetchval("SELECT count(*) FROM outbox")
    again = await send(client, ingest, resource)
    assert again.status_code == 200
    assert outcome_code(again.json()) == "duplicate"
    assert event_ids(again.json()) == event_ids(first.json()) != []
    assert await conn.fetchval("SELECT count(*) FROM outbox") == before
    # an older version after a newer one changes nothing
    stale = await send(client, ingest, {**resource, "meta": {"versionId": "6"}, "location": []})
    assert outcome_code(stale.json()) == "stale" and event_ids(stale.json()) == []


async def test_transaction_and_batch_bundles(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    ids = [new_id("enc-").lower() for _ in range(3)]
    transaction = bundle(
        "transaction",
        [encounter(i, "in-progress", location=f"WD12^B1^{n + 1}^RXN01") for n, i in enumerate(ids)],
    )
    response = await send(client, ingest, transaction)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["resourceType"] == "Bundle" and answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK"] * 3
    assert answer["entry"][0]["response"]["location"] == f"Encounter/{ids[0]}/_history/1"
    all_ids = [i for e in answer["entry"] for i in event_ids(e["response"]["outcome"])]
    assert [e["payload"]["location"]["bed_id"] for e in await envelopes(conn, all_ids)] == [
        "RXN01-WD12-B1-1",
        "RXN01-WD12-B1-2",
        "RXN01-WD12-B1-3",
    ]

    # one bad entry refuses a whole transaction, naming the element
    bad = bundle(
        "transaction", [encounter(new_id("enc-"), "in-progress"), encounter(new_id("enc-"), "walking")]
    )
    before = await conn.fetchval("SELECT count(*) FROM outbox")
    refused = await send(client, ingest, bad)
    assert refused.status_code == 400
    issue = refused.json()["issue"][0]
    assert (issue["severity"], issue["code"]) == ("error", "code-invalid")
    assert issue["expression"] == ["Bundle.entry[1].resource.status"]
    assert await conn.fetchval("SELECT count(*) FROM outbox") == before

    # a batch takes the good entries and answers each bad one
    mixed = bundle(
        "batch",
        [
            encounter(new_id("enc-").lower(), "in-progress", location="WD14^B1^1^RXN01"),
            {**encounter(new_id("enc-").lower(), "in-progress"), "period": {"start": "26/11/2026"}},
            encounter(new_id("enc-").lower(), "in-progress", location="W9^B1^1^UNKNOWNFAC"),
        ],
    )
    response = await send(client, ingest, mixed)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK",
        "400 Bad Request",
        "422 Unprocessable Entity",
    ]
    assert entries[1]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[1].resource.period.start"
    ]
    kept = await conn.fetch(
        "SELECT body, status_code FROM quarantine WHERE endpoint = '/v1/pas/fhir' ORDER BY id DESC LIMIT 2"
    )
    assert sorted(r["status_code"] for r in kept) == [400, 422]
    assert {orjson.loads(opened(ingest.secrets, r["body"]))["resourceType"] for r in kept} == {"Encounter"}


async def test_invalid_resources_get_an_operation_outcome(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    cases = [
        (
            {**encounter("x1", "in-progress"), "period": {"start": "yesterday"}},
            400,
            "value",
            "Encounter.period.start",
        ),
        (
            {k: v for k, v in encounter("x2", "in-progress").items() if k != "class"},
            400,
            "required",
            "Encounter.class",
        ),
        ({**encounter("x3", "in-progress"), "colour": "blue"}, 400, "structure", "Encounter.colour"),
        (encounter("x4", "discharged"), 400, "code-invalid", "Encounter.status"),
        ({"resourceType": "Patient", "id": "p1"}, 400, "not-supported", "Patient"),
        (b"{not json", 400, "structure", None),
    ]
    for body, status, code, expression in cases:
        response = await send(client, ingest, body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith(FHIR_JSON)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        issue = outcome["issue"][0]
        assert (issue["severity"], issue["code"]) == ("error", code), issue
        assert issue.get("expression", [None])[0] == expression
    unsigned = await client.post(
        f"{ingest.url}/v1/pas/fhir", content=b"{}", headers={"content-type": FHIR_JSON}
    )
    assert unsigned.status_code == 401 and unsigned.json()["issue"][0]["code"] == "login"


async def test_unmapped_ward_is_accepted_and_names_nothing_personal(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    response = await send(
        client, ingest, encounter(new_id("enc-").lower(), "in-progress", location="WD99^B1^1^RXN01")
    )
    assert response.status_code == 200
    warning = next(i for i in response.json()["issue"] if i["severity"] == "warning")
    assert warning["code"] == "code-unknown" and "WD99" in warning["diagnostics"]
    (admitted,) = await envelopes(conn, event_ids(response.json()))
    assert admitted["payload"]["location"] == {"ward_id": None, "bed_id": None, "pas_code": "WD99^B1^1^RXN01"}
    everything = b"".join(r["value"] for r in await conn.fetch("SELECT value FROM outbox"))
    assert NHS_NUMBER.encode() not in everything and b"Testpatient" not in everything
    assert b"V-enc" not in everything  # visit numbers are pseudonymised too


async def test_unmapped_locations_are_counted_and_listed_as_hl7s_are(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # codes no other test sends: a ward, a room of a known ward, a facility
    ward, room, facility = new_id("WD"), new_id("R"), new_id("ZZ")
    admitted = encounter(new_id("enc-").lower(), "in-progress", location=f"{ward}^B1^1^RXN01")
    bodies: list[dict[str, Any]] = [
        admitted,
        admitted,  # the same version again: a duplicate, not counted twice
        encounter(new_id("enc-").lower(), "in-progress", location=f"{ward}^B2^1^RXN01"),
        encounter(new_id("enc-").lower(), "in-progress", location=f"AMU^{room}^9^RXN01"),
        encounter(
            new_id("enc-").lower(),
            "in-progress",
            location=f"AMU^B1^1^{facility}",
            serviceProvider={"identifier": {"system": ODS, "value": "RXN01"}},
        ),
        # refused whole (the second entry has no site): nothing of it is counted
        bundle(
            "transaction",
            [
                encounter(new_id("enc-").lower(), "in-progress", location=f"{ward}^B3^1^RXN01"),
                encounter(new_id("enc-").lower(), "in-progress", location="AMU^B1^1^NOWHERE"),
            ],
        ),
    ]
    counted = "SELECT coalesce(sum(value), 0) FROM ingest_counter WHERE name = 'fhir.unmapped_location'"
    before = await conn.fetchval(counted)
    statuses = [(await send(client, ingest, body)).status_code for body in bodies]
    assert statuses == [200, 200, 200, 200, 200, 422]

    admin = admin_headers(ingest)
    response = await client.get(f"{ingest.url}/v1/locations/unmapped?source=pas", headers=admin)
    assert response.status_code == 200, response.text
    listed = {(i["site_id"], i["kind"], i["code"]): i for i in response.json()["items"]}
    mine = {
        k: (i["count"], i["example"])
        for k, i in listed.items()
        if {ward, room, facility} & set(k[2].split("^"))
    }
    assert mine == {
        ("RXN01", "ward", ward): (2, f"{ward}^B2^1^RXN01"),
        ("RXN01", "bed", f"AMU^{room}^9"): (1, f"AMU^{room}^9^RXN01"),
        ("RXN01", "facility", facility): (1, f"AMU^B1^1^{facility}"),
    }
    assert await conn.fetchval(counted) - before == 4


async def test_quarantined_encounter_is_replayed_after_the_location_map_is_fixed(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient, map_file: Path
) -> None:
    resource = encounter(new_id("enc-").lower(), "in-progress", location="AMU^B2^4^RXNOLD")
    refused = await send(client, ingest, resource)
    assert refused.status_code == 422
    issue = refused.json()["issue"][0]
    assert issue["code"] == "code-invalid" and "RXNOLD" in issue["diagnostics"]
    quarantine_id = await conn.fetchval("SELECT max(id) FROM quarantine WHERE endpoint = '/v1/pas/fhir'")
    admin = admin_headers(ingest)
    replay_url = f"{ingest.url}/v1/quarantine/{quarantine_id}/replay"

    nurse = token(ingest.secrets, Role.ward_nurse, "ward:RXN01-AMU")
    assert (await client.post(replay_url, headers={"Authorization": f"Bearer {nurse}"})).status_code == 403

    still = await client.post(replay_url, headers=admin)
    assert still.status_code == 422 and still.json()["type"].endswith("/replay-failed")
    row = await conn.fetchrow(
        "SELECT replay_count, replayed_at, last_replay_outcome FROM quarantine WHERE id = $1", quarantine_id
    )
    assert row["replay_count"] == 1 and row["replayed_at"] is None
    assert orjson.loads(row["last_replay_outcome"])["status"] == 422

    # the fix: RXNOLD is the old PAS facility code of Northgate General
    await asyncio.to_thread(map_file.write_text, "facilities:\n  RXNOLD: RXN01\n", encoding="utf-8")
    replayed = await client.post(replay_url, headers=admin)
    assert replayed.status_code == 200, replayed.text
    body = replayed.json()
    (admitted,) = await envelopes(conn, body["event_ids"])
    assert admitted["event_type"] == "patient.admitted"
    assert admitted["payload"]["location"]["bed_id"] == "RXN01-AMU-B2-4"
    row = await conn.fetchrow("SELECT * FROM quarantine WHERE id = $1", quarantine_id)
    assert row["replayed_at"] is not None and row["replay_count"] == 2
    assert row["raw_message_id"] == body["raw_message_id"]
    assert [str(i) for i in row["event_ids"]] == body["event_ids"]
    raw = await conn.fetchrow(
        "SELECT source, endpoint, body FROM raw_message WHERE id = $1", body["raw_message_id"]
    )
    assert (raw["source"], raw["endpoint"]) == ("pas", "/v1/pas/fhir")
    assert orjson.loads(opened(ingest.secrets, raw["body"])) == resource

    again = await client.post(replay_url, headers=admin)
    assert again.status_code == 409 and again.json()["type"].endswith("/already-replayed")
    listed = await client.get(f"{ingest.url}/v1/quarantine", headers=admin)
    item = next(i for i in listed.json()["items"] if i["id"] == quarantine_id)
    assert item["raw_message_id"] == body["raw_message_id"] and item["replayed_at"]

    # a message refused before it was authenticated is never replayed
    await client.post(
        f"{ingest.url}/v1/pas/fhir", content=orjson.dumps(resource), headers={"content-type": FHIR_JSON}
    )
    unsigned_id = await conn.fetchval("SELECT max(id) FROM quarantine WHERE status_code = 401")
    refused_replay = await client.post(f"{ingest.url}/v1/quarantine/{unsigned_id}/replay", headers=admin)
    assert refused_replay.status_code == 409 and refused_replay.json()["type"].endswith("/not-replayable")
