"""The same refusal again lands on its open quarantine row, over HTTP and MLLP, against real ingest.

Senders re-send what was refused, again and again: the quarantine counts the repeats on the open
row (`repeats`, `last_seen_at`) instead of filling with copies, while every sender still gets the
answer it got before. A different body is another row; once a row is replayed, the same refusal
afterwards is a new one. And ingest purges what is past retention when it starts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services.ingest.hl7_intake import prune_idempotency
from shared.db import create_pool
from tests.conftest import eventually
from tests.e2e.ingest_support import (
    NHS_NUMBER,
    Ingest,
    admin_headers,
    admin_json,
    ingest_only,
    new_id,
    now_iso,
    post,
    post_hl7,
)
from tests.helpers import bed_event, opened
from tests.hl7_samples import MllpClient, adt, pid, pv1, segments_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_only(pg_admin_url, tmp_path_factory.mktemp("ingest-quarantine-repeats")) as running:
        yield running


def over_mllp(ingest: Ingest, *messages: str) -> list[dict[str, list[list[str]]]]:
    address = ingest.stack.mllp_address
    assert address is not None
    with MllpClient(address) as mllp:
        mllp.send(*(m.encode() for m in messages))
        return [segments_of(mllp.receive()) for _ in messages]


def without_header(ack: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    """An ACK but its MSH (which carries the time it was built)."""
    return {name: segments for name, segments in ack.items() if name != "MSH"}


async def rows_holding(conn: asyncpg.Connection, ingest: Ingest, marker: str) -> list[dict[str, Any]]:
    """Quarantine rows whose body (stored sealed) holds `marker`, oldest first."""
    rows = await conn.fetch("SELECT * FROM quarantine ORDER BY id")
    return [dict(r) for r in rows if marker.encode() in opened(ingest.secrets, r["body"])]


async def listed(client: httpx.AsyncClient, ingest: Ingest) -> dict[str, Any]:
    return await admin_json(client, ingest, "/v1/quarantine?limit=500")


async def test_an_hl7_message_refused_again_and_again_is_one_row_with_its_repeats(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # formerly: every re-send was a row of its own
    control_id = new_id("RPT")
    no_visit = adt("A01", control_id, pid(), pv1(visit=""))  # PV1-19 missing: AE
    first = await post_hl7(client, ingest, no_visit)
    # four at once: the same refusal arriving concurrently still makes no second row
    again = await asyncio.gather(*(post_hl7(client, ingest, no_visit) for _ in range(4)))
    for response in (first, *again):
        assert response.status_code == 422, response.text
        assert without_header(segments_of(response.content)) == without_header(segments_of(first.content))
    assert segments_of(first.content)["MSA"][0][1:3] == ["AE", control_id]

    (row,) = await rows_holding(conn, ingest, control_id)
    assert row["endpoint"] == "/v1/pas/hl7v2" and row["status_code"] == 422
    assert row["repeats"] == 4 and row["last_seen_at"] > row["received_at"]
    assert opened(ingest.secrets, row["body"]) == no_visit.encode()
    # every refusal is still counted in the interface's statistics
    stats = await client.get(f"{ingest.url}/v1/pas/hl7v2/stats", headers=admin_headers(ingest))
    assert stats.json()["sources"]["pas"]["error"] >= 5

    # the same message over MLLP: a row of its own (another endpoint), repeats counted there too,
    # every frame answered as before
    acks = await asyncio.to_thread(over_mllp, ingest, no_visit, no_visit, no_visit)
    assert [a["MSA"][0][1:3] for a in acks] == [["AE", control_id]] * 3
    assert len({orjson.dumps(without_header(a)) for a in acks}) == 1
    http_row, mllp_row = await rows_holding(conn, ingest, control_id)
    assert mllp_row["endpoint"].startswith("mllp://") and mllp_row["repeats"] == 2
    assert http_row["repeats"] == 4

    # a different body is a different refusal
    other = adt("A01", new_id("RPT"), pid(), pv1(visit=""))
    assert (await post_hl7(client, ingest, other)).status_code == 422
    assert len(await rows_holding(conn, ingest, control_id)) == 2

    items = {i["id"]: i for i in (await listed(client, ingest))["items"]}
    item = items[http_row["id"]]
    assert item["repeats"] == 4
    assert datetime.fromisoformat(item["last_seen_at"]) > datetime.fromisoformat(item["received_at"])
    assert item["body_sha256"] is not None and item["size"] == len(no_visit.encode())


async def test_json_refusals_repeat_on_their_row_and_identical_lines_of_a_batch_share_one(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    url = f"{ingest.url}/v1/bed-events"
    bad = bed_event("RXN01-AMU-B1-1", "on-fire")  # each send is signed anew; the body is the same
    answers = [await post(client, url, ingest.secrets, bad, source="bedmgmt") for _ in range(3)]
    assert {a.status_code for a in answers} == {422}
    assert answers[0].json() == answers[1].json() == answers[2].json()
    (row,) = await rows_holding(conn, ingest, '"on-fire"')
    assert row["repeats"] == 2

    # an ED batch with the same bad line twice, sent twice: one row, seen four times
    attendance = new_id("ATT")
    line = {
        "milestone": "teleported",
        "site_id": "RXN01",
        "attendance_id": attendance,
        "occurred_at": now_iso(),
        "patient": {"nhs_number": NHS_NUMBER},
    }
    ed_url = f"{ingest.url}/v1/ed-events"
    for _ in range(2):
        response = await post(client, ed_url, ingest.secrets, [line, line])
        assert response.status_code == 422, response.text  # no line taken
        outcomes = response.json()["lines"]
        assert [o["status"] for o in outcomes] == ["rejected", "rejected"]
        assert outcomes[0]["quarantine_id"] == outcomes[1]["quarantine_id"]
    (kept,) = await rows_holding(conn, ingest, attendance)
    assert kept["id"] == outcomes[0]["quarantine_id"] and kept["repeats"] == 3

    # refused before authentication: the same unsigned body is one row too, its digest the whole body's
    unsigned = orjson.dumps(bed_event("RXN01-AMU-B1-2", "occupied")) + b" " * 5000
    for _ in range(2):
        refused = await client.post(url, content=unsigned, headers={"content-type": "application/json"})
        assert refused.status_code == 401
    (row,) = [r for r in await rows_holding(conn, ingest, "RXN01-AMU-B1-2") if r["status_code"] == 401]
    assert row["repeats"] == 1 and row["body_truncated"] and row["body_length"] == len(unsigned)


@asynccontextmanager
async def database_refuses(conn: asyncpg.Connection, marker: str) -> AsyncIterator[None]:
    """PostgreSQL refuses (with its own data exception) an HL7 message whose control id holds
    `marker`: ICC answers AE and keeps it, and it can be replayed once the database takes it."""
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await conn.execute(
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.control_id = '{marker}' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = 'character_not_in_repertoire';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {name} BEFORE INSERT ON hl7_message FOR EACH ROW EXECUTE FUNCTION {name}();
        """
    )
    try:
        yield
    finally:
        await conn.execute(f"DROP TRIGGER {name} ON hl7_message; DROP FUNCTION {name}()")


async def test_after_a_replay_the_same_refusal_is_a_new_row(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    control_id = new_id("RPL")
    message = adt("A01", control_id, pid(), pv1("AMU^B3^1^RXN01"))
    async with database_refuses(conn, control_id):
        for _ in range(2):
            refused = await post_hl7(client, ingest, message)
            assert refused.status_code == 422 and segments_of(refused.content)["MSA"][0][1] == "AE"
    (first,) = await rows_holding(conn, ingest, control_id)
    assert first["repeats"] == 1

    replayed = await client.post(
        f"{ingest.url}/v1/quarantine/{first['id']}/replay", headers=admin_headers(ingest)
    )
    assert replayed.status_code == 200, replayed.text

    # the message is forgotten (past ICC_HL7_DEDUP_DAYS), and the database refuses it once more
    await conn.execute(
        "UPDATE hl7_message SET received_at = now() - interval '40 days' WHERE control_id = $1", control_id
    )
    pool = await create_pool(ingest.database_url)
    try:
        assert await prune_idempotency(pool, timedelta(days=30)) >= 1
    finally:
        await pool.close()
    async with database_refuses(conn, control_id):
        assert (await post_hl7(client, ingest, message)).status_code == 422
    old, new = await rows_holding(conn, ingest, control_id)
    assert old["id"] == first["id"] and old["replayed_at"] is not None and old["repeats"] == 1
    assert new["replayed_at"] is None and new["repeats"] == 0


async def test_ingest_purges_what_is_past_retention_when_it_starts(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # one accepted message, one refused (open), one refused then replayed
    taken = adt("A01", new_id("KEEP"), pid(), pv1("AMU^B4^1^RXN01"))
    assert (await post_hl7(client, ingest, taken)).status_code == 200
    open_id = new_id("OPEN")
    assert (await post_hl7(client, ingest, adt("A01", open_id, pid(), pv1(visit="")))).status_code == 422
    replay_id = new_id("DONE")
    async with database_refuses(conn, replay_id):
        assert (await post_hl7(client, ingest, adt("A01", replay_id))).status_code == 422
    (done,) = await rows_holding(conn, ingest, replay_id)
    replayed = await client.post(
        f"{ingest.url}/v1/quarantine/{done['id']}/replay", headers=admin_headers(ingest)
    )
    linked = replayed.json()["raw_message_id"]
    (opened_row,) = await rows_holding(conn, ingest, open_id)
    taken_raw = await conn.fetchval("SELECT max(id) FROM raw_message WHERE id <> $1", linked)

    # 40 days on: the accepted message and the replayed row are past retention (30 days), the
    # replayed row's raw message goes with it, the open row is not (90 days from last seen)
    await conn.execute(
        "UPDATE raw_message SET received_at = received_at - interval '40 days' WHERE id = any($1)",
        [taken_raw, linked],
    )
    await conn.execute(
        "UPDATE quarantine SET received_at = received_at - interval '40 days', "
        "last_seen_at = last_seen_at - interval '40 days', replayed_at = replayed_at - interval '40 days' "
        "WHERE id = any($1)",
        [done["id"], opened_row["id"]],
    )
    before = (await listed(client, ingest))["purged"]
    await asyncio.to_thread(ingest.stack.stop_service, "ingest")
    await asyncio.to_thread(ingest.stack.start_service, "ingest")
    await asyncio.to_thread(ingest.stack.wait_ready, "ingest")

    async def purged() -> dict[str, int] | None:
        counts: dict[str, int] = (await listed(client, ingest))["purged"]
        return counts if counts.get("raw_message", 0) - before.get("raw_message", 0) >= 2 else None

    counts = await eventually(purged)
    assert counts.get("quarantine", 0) - before.get("quarantine", 0) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM raw_message WHERE id = any($1)", [taken_raw, linked]) == 0
    )
    assert await conn.fetchval("SELECT count(*) FROM quarantine WHERE id = $1", done["id"]) == 0
    assert await conn.fetchval("SELECT count(*) FROM quarantine WHERE id = $1", opened_row["id"]) == 1


async def test_the_quarantine_lists_by_source_endpoint_state_and_status(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # formerly: no filter, so an integration team found its open refusals among every other row
    # an HL7 refusal left open, one replayed, and a JSON refusal (a status not in the table) from
    # another source
    open_id, done_id = new_id("OPEN"), new_id("DONE")
    assert (await post_hl7(client, ingest, adt("A01", open_id, pid(), pv1(visit="")))).status_code == 422
    async with database_refuses(conn, done_id):
        assert (await post_hl7(client, ingest, adt("A01", done_id))).status_code == 422
    json_marker = new_id("JSON")
    refused = await post(
        client,
        f"{ingest.url}/v1/bed-events",
        ingest.secrets,
        bed_event("RXN01-AMU-B1", json_marker),
        source="bedmgmt",
    )
    assert refused.status_code == 422, refused.text
    ((hl7_open,), (hl7_done,), (json_row,)) = [
        await rows_holding(conn, ingest, marker) for marker in (open_id, done_id, json_marker)
    ]
    replayed = await client.post(
        f"{ingest.url}/v1/quarantine/{hl7_done['id']}/replay", headers=admin_headers(ingest)
    )
    assert replayed.status_code == 200, replayed.text

    async def ids(query: str) -> list[int]:
        items = (await admin_json(client, ingest, f"/v1/quarantine?limit=500&{query}"))["items"]
        return [item["id"] for item in items]

    hl7_open_rows = await ids("endpoint=/v1/pas/hl7v2&state=open")
    assert hl7_open["id"] in hl7_open_rows and hl7_done["id"] not in hl7_open_rows
    assert json_row["id"] not in hl7_open_rows
    replayed_rows = await ids("state=replayed")
    assert hl7_done["id"] in replayed_rows and hl7_open["id"] not in replayed_rows
    from_bedmgmt = await ids("source=bedmgmt&status_code=422")
    assert json_row["id"] in from_bedmgmt and hl7_open["id"] not in from_bedmgmt
    # every row listed matches the filter, newest first
    listed_rows = (await admin_json(client, ingest, "/v1/quarantine?limit=500&source=pas&state=open"))[
        "items"
    ]
    assert all(r["source"] == "pas" and r["replayed_at"] is None for r in listed_rows)
    assert [r["id"] for r in listed_rows] == sorted((r["id"] for r in listed_rows), reverse=True)

    wrong = await client.get(f"{ingest.url}/v1/quarantine?state=closed", headers=admin_headers(ingest))
    assert wrong.status_code == 422 and wrong.headers["content-type"] == "application/problem+json"
    assert "state" in wrong.text
