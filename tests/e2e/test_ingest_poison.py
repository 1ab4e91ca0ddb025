"""Poison messages and a failing database, against real ingest and PostgreSQL.

A message whose content cannot be stored is refused alone, precisely, and kept in the quarantine;
the messages that arrived with it are taken; an in-order MLLP feed goes on past it. A database that
cannot store anything just now is answered "send it again" (503), on every interface. Every MLLP
frame is answered, whatever fails in ICC, and a connection left idle is closed.

The database is made to fail for real: a trigger raising PostgreSQL's own data exception for a
marked message (as it does for a NUL character in text), or a lock that keeps ingest waiting until
its connection is terminated (as when the server restarts).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from icc.embedded import free_port
from services.ingest.group_commit import GroupCommitWriter, Inbound, Unstorable
from services.ingest.hl7_intake import Hl7Bookkeeping, Hl7Intake, Reply
from services.ingest.location_source import LocationMapSource
from services.ingest.mllp import MllpServer, parse_allow_list
from shared.db import create_pool
from shared.organisation import Organisation
from shared.pseudonymise import IdKind
from shared.sealed import Sealer, new_key
from shared.secrets_store import Secrets
from tests.conftest import SAMPLE_LOCATION_MAP, eventually
from tests.e2e.ingest_support import (
    NHS_NUMBER,
    Ingest,
    admin_headers,
    encounter,
    ingest_only,
    new_id,
    now_iso,
    post,
    post_hl7,
)
from tests.helpers import bed_event, opened
from tests.hl7_samples import MllpClient, adt, batch, evn, msh, pid, pv1, segments_of
from tests.integration.support import bed_envelope, outbox_event

pytestmark = pytest.mark.e2e

FHIR_JSON = "application/fhir+json"
IDLE_SECONDS = 3


@pytest.fixture(scope="module")
def ingest(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_only(
        pg_admin_url, tmp_path_factory.mktemp("ingest-poison"), ICC_MLLP_IDLE_SECONDS=str(IDLE_SECONDS)
    ) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def post_fhir(
    client: httpx.AsyncClient, ingest: Ingest, resource: dict[str, Any], content_type: str = FHIR_JSON
) -> httpx.Response:
    return await post(
        client, f"{ingest.url}/v1/pas/fhir", ingest.secrets, resource, source="pas", content_type=content_type
    )


async def post_bed(
    client: httpx.AsyncClient, ingest: Ingest, event: dict[str, Any], content_type: str = "application/json"
) -> httpx.Response:
    return await post(
        client,
        f"{ingest.url}/v1/bed-events",
        ingest.secrets,
        event,
        source="bedmgmt",
        content_type=content_type,
    )


def milestone(attendance: str) -> dict[str, Any]:
    return {
        "milestone": "conclusion",
        "site_id": "RXN01",
        "attendance_id": attendance,
        "occurred_at": now_iso(),
        "patient": {"nhs_number": NHS_NUMBER, "mrn": "MRN0042"},
    }


def over_mllp(ingest: Ingest, *messages: str) -> list[dict[str, list[list[str]]]]:
    address = ingest.stack.mllp_address
    assert address is not None
    return over_mllp_at(address, *messages)


def over_mllp_at(address: tuple[str, int], *messages: str) -> list[dict[str, list[list[str]]]]:
    """Send the messages as frames on one connection; each frame's ACK, in order."""
    with MllpClient(address) as mllp:
        mllp.send(*(m.encode() for m in messages))
        return [segments_of(mllp.receive()) for _ in messages]


async def kept(conn: asyncpg.Connection, secrets: Secrets, marker: str) -> list[dict[str, Any]]:
    """Quarantine rows whose body (opened: it is stored sealed) holds `marker`, body opened."""
    rows = await conn.fetch("SELECT endpoint, body, status_code, problem FROM quarantine ORDER BY id")
    found = [{**row, "body": opened(secrets, row["body"])} for row in rows]
    return [row for row in found if marker.encode() in row["body"]]


def err_location(ack: dict[str, list[list[str]]]) -> str:
    """ERR-1 of a v2.4 ACK without the code: `SEGMENT^sequence^field`."""
    return "^".join(ack["ERR"][0][1].split("^")[:3])


def err_code(ack: dict[str, list[list[str]]]) -> str:
    return ack["ERR"][0][1].split("^")[3].split("&")[0]


# ── what the database cannot store is refused at the edge, naming the field ─────────────────


async def test_a_nul_escape_in_msh10_is_refused_alone_and_kept(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # formerly: \X00\ unescapes to a NUL, which PostgreSQL refused mid-commit, and the message
    # and every other sharing its group commit were answered 503 "send it again"
    poison = adt("A01", "NUL\\X00\\ID")
    others = [adt("A01", f"N{n}{uuid.uuid4().hex[:8]}") for n in range(5)]
    answers = await asyncio.gather(*(post_hl7(client, ingest, m) for m in [poison, *others]))
    refused, *taken = answers
    assert refused.status_code == 400, refused.text
    ack = segments_of(refused.content)
    assert ack["MSA"][0][1:3] == ["AR", "NUL\\X00\\ID"]
    assert (err_location(ack), err_code(ack)) == ("MSH^1^10", "102")
    assert [a.status_code for a in taken] == [200] * 5
    (row,) = await kept(conn, ingest.secrets, "NUL\\X00\\ID")
    assert row["status_code"] == 400 and row["body"] == poison.encode()
    assert orjson.loads(row["problem"])["errors"][0]["location"] == "MSH-10"


async def test_a_nul_escape_in_pv1_3_is_an_error_and_an_mllp_feed_goes_on(
    ingest: Ingest, conn: asyncpg.Connection
) -> None:
    control_id = new_id("PV")
    poison = adt("A01", control_id, pid(), pv1("AMU\\X00\\^B1^1^RXN01"))
    first, second = await asyncio.to_thread(over_mllp, ingest, poison, adt("A08", new_id("NEXT")))
    assert first["MSA"][0][1:3] == ["AE", control_id]
    assert (err_location(first), err_code(first)) == ("PV1^1^3", "102")
    assert second["MSA"][0][1] == "AA"
    (row,) = await kept(conn, ingest.secrets, control_id)
    assert row["endpoint"].startswith("mllp://") and row["status_code"] == 422


@pytest.mark.parametrize(
    ("where", "stamp"),
    [("EVN^1^2", "00010101000000+0100"), ("MSH^1^7", "99991231235959-0100"), ("PV1^1^44", "00010101+0001")],
)
async def test_a_time_out_of_range_once_read_as_utc_is_a_data_type_error_over_http_and_mllp(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient, where: str, stamp: str
) -> None:
    # formerly: OverflowError escaped the parser: a bare 500 over HTTP, and over MLLP the
    # connection dropped with the next frame unanswered
    def message(control_id: str) -> str:
        segments = {
            "EVN^1^2": [msh("A01", control_id), evn("A01", stamp), pid(), pv1()],
            "MSH^1^7": [msh("A01", control_id, sent=stamp), evn("A01"), pid(), pv1()],
            "PV1^1^44": [msh("A01", control_id), evn("A01"), pid(), pv1(admitted=stamp)],
        }[where]
        return "\r".join(segments) + "\r"

    over_http = new_id("TS")
    response = await post_hl7(client, ingest, message(over_http))
    assert response.status_code == 422, response.text
    ack = segments_of(response.content)
    assert ack["MSA"][0][1:3] == ["AE", over_http]
    assert (err_location(ack), err_code(ack)) == (where, "102")
    assert len(await kept(conn, ingest.secrets, over_http)) == 1

    over_tcp = new_id("TS")
    first, second = await asyncio.to_thread(over_mllp, ingest, message(over_tcp), adt("A08", new_id("NEXT")))
    assert first["MSA"][0][1:3] == ["AE", over_tcp] and err_location(first) == where
    assert second["MSA"][0][1] == "AA"


async def test_a_nul_in_a_fhir_string_is_refused_naming_the_element(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    # no PostgreSQL text or JSON value may hold a NUL: refused at the edge, naming the element
    resource = encounter(new_id("ENC"), "in-progress")
    resource["location"][0]["location"]["display"] = "AMU\x00B1"
    response = await post_fhir(client, ingest, resource)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == FHIR_JSON
    (issue,) = response.json()["issue"]
    assert issue["code"] == "value"
    assert issue["expression"] == ["Encounter.location[0].location.display"]
    assert "NUL" in issue["diagnostics"]
    (row,) = await kept(conn, ingest.secrets, resource["id"])
    assert row["status_code"] == 400


async def test_a_nul_in_json_is_refused_naming_the_field_and_an_ndjson_batch_keeps_its_good_lines(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    url = f"{ingest.url}/v1/ed-events"
    poisoned = milestone(new_id("ATT") + "\x00")
    response = await post(client, url, ingest.secrets, poisoned)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [
        {"field": "attendance_id", "message": "holds a NUL character (\\u0000), which ICC cannot store"}
    ]
    assert len(await kept(conn, ingest.secrets, poisoned["attendance_id"].rstrip("\x00"))) == 1

    good, bad = milestone(new_id("ATT")), milestone(new_id("ATT") + "\x00")
    response = await post(client, url, ingest.secrets, [good, bad])
    assert response.status_code == 202, response.text
    assert [line["status"] for line in response.json()["lines"]] == ["accepted", "rejected"]
    assert response.json()["lines"][1]["problem"]["errors"][0]["field"] == "attendance_id"


# ── what the database still refuses is refused alone; the rest of its group commit is taken ──


@asynccontextmanager
async def database_refuses(conn: asyncpg.Connection, marker: str) -> AsyncIterator[None]:
    """PostgreSQL refuses, with its own data exception for a NUL in text, a marked message: a
    stand-in for whatever content it refuses that ICC does not yet catch at the edge.

    Raw bodies are stored sealed, so the mark is where PostgreSQL can see it: an HL7 message's
    control id (its idempotency row), or a request's content type (`marked`)."""
    await conn.execute(
        """
        CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF position(TG_ARGV[0] IN to_jsonb(NEW)::text) > 0 THEN
                RAISE EXCEPTION 'invalid byte sequence for encoding "UTF8": 0x00'
                    USING ERRCODE = 'character_not_in_repertoire';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    for table in ("raw_message", "hl7_message"):
        await conn.execute(
            f"CREATE TRIGGER refuse_marked BEFORE INSERT ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION refuse_marked('{marker}')"
        )
    try:
        yield
    finally:
        await conn.execute(
            "DROP TRIGGER refuse_marked ON raw_message; DROP TRIGGER refuse_marked ON hl7_message; "
            "DROP FUNCTION refuse_marked()"
        )


def marked(content_type: str, marker: str) -> str:
    """A content type carrying `marker` as a parameter, which ICC keeps with the raw message."""
    return f"{content_type}; refuse={marker}"


async def test_an_hl7_message_the_database_refuses_is_an_error_and_the_rest_of_its_batch_is_taken(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    marker = new_id("POISON")
    ids = [new_id("B") for _ in range(4)]
    ids[2] = marker
    messages = [
        adt("A01", control_id, pid(), pv1(f"AMU^B1^{n}^RXN01")) for n, control_id in enumerate(ids, 1)
    ]
    async with database_refuses(conn, marker):
        response = await post_hl7(client, ingest, batch(messages))
        # an in-order feed goes on: the same refusal over MLLP, and the next frame is taken
        resent, following = await asyncio.to_thread(
            over_mllp, ingest, messages[2], adt("A08", new_id("NEXT"))
        )
    assert response.status_code == 422, response.text
    acks = segments_of(response.content)
    assert [m[1] for m in acks["MSA"]] == ["AA", "AA", "AE", "AA"]
    assert err_code({"ERR": acks["ERR"]}) == "102" and "cannot store" in acks["ERR"][0][1]
    stored = await conn.fetch("SELECT control_id FROM hl7_message WHERE control_id = any($1)", ids)
    assert sorted(r["control_id"] for r in stored) == sorted(ids[:2] + ids[3:])
    assert resent["MSA"][0][1:3] == ["AE", marker] and following["MSA"][0][1] == "AA"
    assert [r["status_code"] for r in await kept(conn, ingest.secrets, marker)] == [422, 422]


async def test_a_json_or_fhir_message_the_database_refuses_is_a_422_and_the_others_are_taken(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    marker = str(uuid.uuid4())
    poisoned_bed = bed_event("RXN02-W1-B1-3", "occupied", event_id=uuid.UUID(marker))
    beds = [bed_event(f"RXN02-W1-B1-{n}", "occupied") for n in (1, 2, 4)]
    poisoned_encounter, other_encounter = (
        encounter(marker, "in-progress"),
        encounter(new_id("ENC"), "in-progress"),
    )
    async with database_refuses(conn, marker):
        bed_answers = await asyncio.gather(
            post_bed(client, ingest, poisoned_bed, marked("application/json", marker)),
            *(post_bed(client, ingest, b) for b in beds),
        )
        fhir_answers = await asyncio.gather(
            post_fhir(client, ingest, poisoned_encounter, marked(FHIR_JSON, marker)),
            post_fhir(client, ingest, other_encounter),
        )
        ndjson = await post(
            client,
            f"{ingest.url}/v1/ed-events",
            ingest.secrets,
            b"".join(orjson.dumps(m) + b"\n" for m in (milestone(marker), milestone(new_id("ATT")))),
            content_type=marked("application/x-ndjson", marker),
        )
        # the lines were to be committed together: each is refused and kept on its own, so replaying
        # them tells which it was: the other one is taken
        line = ndjson.json()["lines"][1]
        admin = admin_headers(ingest)
        replayed = await client.post(
            f"{ingest.url}/v1/quarantine/{line['quarantine_id']}/replay", headers=admin
        )

    refused, *taken = bed_answers
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("/unstorable") and "cannot store" in refused.json()["detail"]
    assert [a.status_code for a in taken] == [202] * 3

    fhir_refused, fhir_taken = fhir_answers
    assert (fhir_refused.status_code, fhir_taken.status_code) == (422, 200), fhir_refused.text
    assert [i["code"] for i in fhir_refused.json()["issue"]] == ["processing"]

    assert ndjson.status_code == 422, ndjson.text
    assert [line["status"] for line in ndjson.json()["lines"]] == ["rejected", "rejected"]
    assert [r["status_code"] for r in await kept(conn, ingest.secrets, marker)] == [422, 422, 422]
    assert replayed.status_code == 200, replayed.text


# ── a database that cannot store anything just now: "send it again" ────────────────────────


async def refused_while_the_database_fails(
    conn: asyncpg.Connection, send: Callable[[], Coroutine[Any, Any, httpx.Response]]
) -> httpx.Response:
    """Send while raw_message is locked, then terminate ingest's waiting connection (as a server
    restart would); the answer to the request."""

    async def waiting() -> int | None:
        await conn.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        pid: int | None = await conn.fetchval(
            """
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND wait_event_type = 'Lock' AND query LIKE '%raw_message%'
            """
        )
        return pid

    async with conn.transaction():
        await conn.execute("LOCK TABLE raw_message IN ACCESS EXCLUSIVE MODE")
        sent = asyncio.create_task(send())
        ingest_backend = await eventually(waiting)
        await conn.execute("SELECT pg_terminate_backend($1)", ingest_backend)
    return await sent


async def test_a_database_failure_is_answered_send_it_again_on_every_interface(
    ingest: Ingest, conn: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    control_id = new_id("DOWN")
    hl7 = await refused_while_the_database_fails(
        conn, lambda: post_hl7(client, ingest, adt("A01", control_id))
    )
    assert hl7.status_code == 503, hl7.text
    assert hl7.headers["retry-after"].isdigit()
    ack = segments_of(hl7.content)
    assert ack["MSA"][0][1:3] == ["AR", control_id] and err_code(ack) == "207"

    resource = encounter(new_id("ENC"), "in-progress")
    fhir = await refused_while_the_database_fails(conn, lambda: post_fhir(client, ingest, resource))
    assert fhir.status_code == 503, fhir.text
    assert fhir.headers["content-type"] == FHIR_JSON and fhir.headers["retry-after"].isdigit()
    assert [i["code"] for i in fhir.json()["issue"]] == ["transient"]

    event = bed_event("RXN02-W1-B1-5", "closed")
    bed = await refused_while_the_database_fails(conn, lambda: post_bed(client, ingest, event))
    assert bed.status_code == 503, bed.text
    assert bed.headers["content-type"] == "application/problem+json"
    assert bed.headers["retry-after"].isdigit() and bed.json()["type"].endswith("/unavailable")

    # nothing was wrong with the messages: none is kept, and sending them again is taken
    for marker in (control_id, resource["id"], event["bed_id"]):
        assert await kept(conn, ingest.secrets, marker) == []
    assert (await post_hl7(client, ingest, adt("A01", control_id))).status_code == 200
    assert (await post_fhir(client, ingest, resource)).status_code == 200
    assert (await post_bed(client, ingest, event)).status_code == 202


# ── MLLP connections ──────────────────────────────────────────────────────────────────────


def closed_by_the_server(address: tuple[str, int], sent: bytes, within: float) -> bool:
    with socket.create_connection(address, timeout=within) as sock:
        sock.sendall(sent)
        try:
            return sock.recv(65536) == b""
        except TimeoutError:
            return False


async def test_an_idle_mllp_connection_is_closed_and_a_half_sent_frame_dropped(ingest: Ingest) -> None:
    address = ingest.stack.mllp_address
    assert address is not None
    # a busy connection is not idle: frames apart by less than the idle time are all answered
    with MllpClient(address) as mllp:
        for _ in range(3):
            mllp.send(adt("A08", new_id("BUSY")).encode())
            assert segments_of(mllp.receive())["MSA"][0][1] == "AA"
            await asyncio.sleep(IDLE_SECONDS / 2)
    half = b"\x0b" + adt("A08", new_id("HALF")).encode()[:40]
    assert await asyncio.to_thread(closed_by_the_server, address, half, IDLE_SECONDS * 10)
    assert await asyncio.to_thread(closed_by_the_server, address, b"", IDLE_SECONDS * 10)
    log = ingest.stack.data_dir / "logs" / "ingest.log"

    async def logged() -> str | None:
        text = log.read_text(errors="replace")
        return text if "in a frame; its 40 bytes dropped" in text else None

    text = await eventually(logged)
    assert text.count(f"closed: idle for {IDLE_SECONDS} s") >= 2  # and the one that sent nothing


class FaultyIntake(Hl7Intake):
    """ICC's HL7 intake with faults of ICC's own injected: mapping a patient identifier `FAULT`
    fails, and so does taking a frame that holds `BREAK`, outside any one message."""

    def pseudonymise(self, kind: IdKind, value: str, issuer: str) -> str:
        if value == "FAULT":
            raise RuntimeError("injected fault in mapping")
        return super().pseudonymise(kind, value, issuer)

    async def receive(self, body: bytes, *, source: str, endpoint: str, content_type: str) -> Reply:
        if b"BREAK" in body:
            raise RuntimeError("injected fault in taking a frame")
        return await super().receive(body, source=source, endpoint=endpoint, content_type=content_type)


async def test_every_mllp_frame_is_answered_whatever_fails_in_icc(
    database_url: str, org: Organisation, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(database_url)
    sealer = Sealer(new_key())
    writer = GroupCommitWriter(pool, sealer=sealer, steps=[Hl7Bookkeeping()])
    running = asyncio.create_task(writer.run())
    key = secrets.token_hex(32)  # generated per run
    intake = FaultyIntake(writer, pool, LocationMapSource(org, SAMPLE_LOCATION_MAP), key)
    server = MllpServer(
        intake, host="127.0.0.1", port=free_port(), rules=parse_allow_list("127.0.0.1=pas"), max_frame=65536
    )
    await server.start()
    try:
        frames = [
            adt("A01", "FAULTY1", pid(nhs="", mrn="FAULT"), pv1()),
            adt("A01", "BREAK1"),
            adt("A01", "FINE1"),
        ]
        with caplog.at_level(logging.ERROR):
            acks = await asyncio.to_thread(over_mllp_at, (server.host, server.port), *frames)
        assert [(a["MSA"][0][1], a["MSA"][0][2]) for a in acks] == [
            ("AE", "FAULTY1"),
            ("AE", "BREAK1"),
            ("AA", "FINE1"),
        ]
        assert [err_code(a) for a in acks[:2]] == ["207", "207"]
        failures = [r for r in caplog.records if r.exc_info]
        assert {str(r.exc_info[1]) for r in failures if r.exc_info} == {
            "injected fault in mapping",
            "injected fault in taking a frame",
        }
        kept_rows = await pool.fetch("SELECT body, status_code FROM quarantine ORDER BY id")
        assert [(sealer.open(r["body"]), r["status_code"]) for r in kept_rows] == [
            (frames[0].encode(), 422),
            (frames[1].encode(), 422),
        ]
    finally:
        await server.stop()
        running.cancel()
        await pool.close()


class FaultyStep:
    """A writer step with a fault of ICC's own: it fails on the message whose body holds `FAULT`."""

    async def before(self, conn: asyncpg.Connection, batch: list[Inbound]) -> list[Inbound]:
        return batch

    async def after(self, conn: asyncpg.Connection, written: list[Inbound]) -> None:
        if any(b"FAULT" in item.body for item in written):
            raise RuntimeError("injected fault in a step")


async def test_a_group_commit_isolates_the_one_message_that_fails_and_keeps_running(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(database_url)
    admin = await asyncpg.connect(database_url)
    writer = GroupCommitWriter(pool, sealer=Sealer(new_key()), steps=[FaultyStep()])
    running: asyncio.Task[None] | None = None
    try:
        marker = new_id("POISON")
        async with database_refuses(admin, marker):
            bodies = [b"one", b"two", b"FAULT", b"four"]
            items = [
                # the second is marked where PostgreSQL sees it (raw bodies are stored sealed)
                Inbound(
                    "test",
                    "/test",
                    marked("text/plain", marker) if n == 1 else "text/plain",
                    body,
                    [outbox_event(bed_envelope("RXN01", n))],
                )
                for n, body in enumerate(bodies)
            ]
            for item in items:  # queued before the writer runs: one batch
                writer.queue.put_nowait(item)
            running = asyncio.create_task(writer.run())
            outcomes = await asyncio.gather(*(item.done for item in items), return_exceptions=True)
            assert [type(o).__name__ for o in outcomes] == ["set", "Unstorable", "RuntimeError", "set"]
            assert isinstance(outcomes[1], Unstorable) and outcomes[1].cause.sqlstate == "22021"
            assert [len(o) for o in outcomes if isinstance(o, set)] == [1, 1]
            # and it goes on taking messages
            later = Inbound("test", "/test", "text/plain", b"five", [outbox_event(bed_envelope("RXN01", 5))])
            assert len(await writer.submit(later)) == 1
        assert await pool.fetchval("SELECT count(*) FROM raw_message") == 3
        assert any(r.exc_info and str(r.exc_info[1]) == "injected fault in a step" for r in caplog.records)
    finally:
        if running is not None:
            running.cancel()
        await admin.close()
        await pool.close()
