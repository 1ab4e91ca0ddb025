"""HL7 v2 ADT over HTTP and MLLP into the real stack: ACKs, commits, idempotency, quarantine, listings."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import hl7
import httpx
import orjson
import pytest

from icc.embedded import Broker
from icc.stack import Stack
from shared.auth import Role
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings
from tests.helpers import opened, token
from tests.hl7_samples import (
    NHS_NUMBER,
    SURNAME,
    VISIT,
    MllpClient,
    adt,
    batch,
    evn,
    mllp_frame,
    msh,
    npu,
    pid,
    pv1,
    segments_of,
    signed_headers,
)

pytestmark = pytest.mark.e2e

HL7_CONTENT_TYPE = "x-application/hl7-v2+er7"


async def post(
    client: httpx.AsyncClient, stack: Stack, secrets: Secrets, body: str | bytes
) -> httpx.Response:
    raw = body.encode() if isinstance(body, str) else body
    return await client.post(
        f"{stack.url_of('ingest')}/v1/pas/hl7v2",
        content=raw,
        headers=signed_headers(secrets.webhook_secrets["pas"], raw),
    )


def msa(response_body: str | bytes) -> list[str]:
    return segments_of(response_body)["MSA"][0]


async def test_a01_is_committed_then_acknowledged(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    body = adt("A01", "HTTP0001")
    async with httpx.AsyncClient(timeout=30) as client:
        response = await post(client, stack, test_secrets, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == HL7_CONTENT_TYPE
    assert msa(response.content)[1:3] == ["AA", "HTTP0001"]
    assert segments_of(response.content)["MSH"][0][8] == "ACK^A01^ACK"

    rows = await db.fetch("SELECT topic, key, value FROM outbox")
    assert [(r["topic"], r["key"]) for r in rows] == [("icc.beds.v1", "RXN01")]
    event = orjson.loads(rows[0]["value"])
    assert event["event_type"] == "patient.admitted"
    assert event["payload"]["location"]["bed_id"] == "RXN01-AMU-B1-1"
    stored = rows[0]["value"].decode()
    assert NHS_NUMBER not in stored and VISIT not in stored and SURNAME not in stored
    raw = await db.fetchval("SELECT body FROM raw_message")
    assert SURNAME.encode() not in raw and NHS_NUMBER.encode() not in raw  # sealed at rest
    assert opened(test_secrets, raw) == body.encode()  # kept as sent
    assert await db.fetchval("SELECT ack FROM hl7_message WHERE control_id = 'HTTP0001'") == response.text


async def test_a_resent_message_gets_the_same_answer_and_no_new_events(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    body = adt("A02", "RESEND01", pid(), pv1("WD10^B1^1^RXN01", prior="AMU^B1^1^RXN01"))
    async with httpx.AsyncClient(timeout=30) as client:
        first = await post(client, stack, test_secrets, body)
        second = await post(client, stack, test_secrets, body)
        # the same message again, but with LF separators: the same message, so the same answer
        third = await post(client, stack, test_secrets, body.replace("\r", "\n"))
    assert first.status_code == second.status_code == third.status_code == 200
    assert second.content == first.content == third.content
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1
    assert await db.fetchval("SELECT count(*) FROM raw_message") == 1


async def test_a_reused_control_id_with_other_content_is_processed_and_counted(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        first = await post(client, stack, test_secrets, adt("A01", "REUSED"))
        other = await post(client, stack, test_secrets, adt("A03", "REUSED", pid(), pv1()))
        admin = token(test_secrets, Role.admin, "system:QXN")
        stats = await client.get(
            f"{stack.url_of('ingest')}/v1/pas/hl7v2/stats", headers={"Authorization": f"Bearer {admin}"}
        )
    assert msa(first.content)[1] == msa(other.content)[1] == "AA"
    assert first.content != other.content
    types = [
        orjson.loads(r["value"])["event_type"] for r in await db.fetch("SELECT value FROM outbox ORDER BY id")
    ]
    assert types == ["patient.admitted", "patient.discharged"]
    counters = stats.json()["sources"]["pas"]
    assert counters["control_id_reused"] == 1 and counters["accepted"] == 2


async def test_a20_changes_the_live_bed_state(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await post(
            client, stack, test_secrets, adt("A20", "BED00001", npu("WD12^B3^4^RXN01", "C"))
        )
    assert msa(response.content)[1] == "AA"

    async def status() -> str | None:
        return await db.fetchval(
            "SELECT summary->'beds'->>'RXN01-WD12-B3-4' FROM ward_state WHERE ward_id = 'RXN01-WD12'"
        )

    async def closed() -> str | None:
        return "closed" if await status() == "closed" else None

    assert await eventually(closed, timeout=60) == "closed"


async def test_an_a04_goes_to_the_ed_topic_and_an_a17_is_one_swap(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    register = adt("A04", "ED000001", pid(), pv1("ED^MAJ^C3^RXN02", patient_class="E"))
    swap = adt("A17", "SWAP0001", pid(), pv1("AMU^B1^2^RXN01"), pid("9876543210", "K2"), pv1(visit="V2"))
    async with httpx.AsyncClient(timeout=30) as client:
        for body in (register, swap):
            assert msa((await post(client, stack, test_secrets, body)).content)[1] == "AA"
    rows = await db.fetch("SELECT topic, key, value FROM outbox WHERE topic <> 'icc.state.v1' ORDER BY id")
    assert [(r["topic"], r["key"], orjson.loads(r["value"])["event_type"]) for r in rows] == [
        ("icc.edflow.v1", "RXN02", "ed.arrived"),
        ("icc.beds.v1", "RXN01", "patient.swapped"),
    ]


async def test_bad_messages_get_ae_or_ar_and_are_quarantined(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    no_visit = adt("A01", "NOVISIT1", pid(), pv1(visit=""))
    lab_result = adt("A01", "ORU00001").replace("ADT^A01", "ORU^R01")
    garbage = b"\x00\xff this is not HL7"
    async with httpx.AsyncClient(timeout=30) as client:
        error = await post(client, stack, test_secrets, no_visit)
        rejected = await post(client, stack, test_secrets, lab_result)
        nonsense = await post(client, stack, test_secrets, garbage)
        unsigned = await client.post(
            f"{stack.url_of('ingest')}/v1/pas/hl7v2",
            content=no_visit.encode(),
            headers={"content-type": HL7_CONTENT_TYPE},
        )
    assert error.status_code == 422 and msa(error.content)[1:3] == ["AE", "NOVISIT1"]
    err = segments_of(error.content)["ERR"][0]
    assert err[1].split("^")[:3] == ["PV1", "1", "19"] and "101" in err[1]  # v2.4: ERR-1
    assert rejected.status_code == 400 and msa(rejected.content)[1:3] == ["AR", "ORU00001"]
    assert nonsense.status_code == 400 and msa(nonsense.content)[1] == "AR"
    assert unsigned.status_code == 401 and unsigned.headers["content-type"] == "application/problem+json"

    rows = await db.fetch("SELECT source, body, status_code, problem FROM quarantine ORDER BY id")
    assert [r["status_code"] for r in rows] == [422, 400, 400, 401]
    assert opened(test_secrets, rows[0]["body"]) == no_visit.encode()
    assert opened(test_secrets, rows[2]["body"]) == garbage
    assert b"NOVISIT1" not in rows[0]["body"]  # sealed at rest
    problems = [orjson.loads(r["problem"]) for r in rows]
    assert problems[0]["ack_code"] == "AE" and problems[0]["errors"][0]["location"] == "PV1-19"
    assert problems[1]["errors"][0]["code"] == "200" and problems[1]["control_id"] == "ORU00001"
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_batch_is_answered_message_by_message(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    body = batch(
        [
            adt("A01", "BATCH001"),
            adt("A02", "BATCH002", pid(), pv1("WD10^B1^1^RXN01", visit="")),  # no visit number: AE
            adt("A02", "BATCH003", pid(), pv1("WD10^B1^1^RXN01", prior="AMU^B1^1^RXN01")),
        ],
        file=True,
    )
    async with httpx.AsyncClient(timeout=30) as client:
        response = await post(client, stack, test_secrets, body)
    assert response.status_code == 422
    replies = hl7.parse_file(response.text)
    assert [(str(m.segment("MSA")(1)), str(m.segment("MSA")(2))) for m in replies[0]] == [
        ("AA", "BATCH001"),
        ("AE", "BATCH002"),
        ("AA", "BATCH003"),
    ]
    types = [
        orjson.loads(r["value"])["event_type"] for r in await db.fetch("SELECT value FROM outbox ORDER BY id")
    ]
    assert types == ["patient.admitted", "patient.transferred"]  # in the batch's order
    async with httpx.AsyncClient(timeout=30) as client:
        again = await post(client, stack, test_secrets, body)  # re-sending the whole batch is harmless
    first_acks, second_acks = (list(hl7.parse_file(r.text)[0]) for r in (response, again))
    assert [str(m) for m in second_acks][0::2] == [str(m) for m in first_acks][0::2]  # stored AAs, verbatim
    assert str(second_acks[1].segment("MSA")) == str(first_acks[1].segment("MSA"))  # the same AE again
    assert await db.fetchval("SELECT count(*) FROM outbox") == 2


async def test_unmapped_locations_are_listed_to_those_who_may_see_them(
    stack: Stack, test_secrets: Secrets
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for n, location in enumerate(
            ["WD99^B1^1^RXN01", "WD99^B2^1^RXN01", "XRAY^^^RXN02", "AMU^B1^1^ZZZ99"]
        ):
            response = await post(client, stack, test_secrets, adt("A01", f"UNMAP{n}", pid(), pv1(location)))
            assert msa(response.content)[1] == "AA", response.text
        url = f"{stack.url_of('ingest')}/v1/locations/unmapped"

        def auth(role: Role, scope: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token(test_secrets, role, scope)}"}

        listed = (await client.get(url, headers=auth(Role.admin, "system:QXN"))).json()
        site_manager = (await client.get(url, headers=auth(Role.site_manager, "site:RXN02"))).json()
        other_site = await client.get(url + "?site=RXN01", headers=auth(Role.site_manager, "site:RXN02"))
        nurse = await client.get(url, headers=auth(Role.ward_nurse, "ward:RXN01-AMU"))
        anonymous = await client.get(url)
    items = {(i["site_id"], i["kind"], i["code"]): i for i in listed["items"]}
    assert set(items) == {
        ("RXN01", "ward", "WD99"),
        ("RXN02", "ward", "XRAY"),
        ("RXN01", "facility", "ZZZ99"),
    }
    ward = items[("RXN01", "ward", "WD99")]
    assert ward["count"] == 2 and ward["example"] == "WD99^B2^1^RXN01" and ward["source"] == "pas"
    assert ward["first_seen"] <= ward["last_seen"]
    assert listed["codes"] == 3 and listed["messages"] == 4
    assert [(i["site_id"], i["code"]) for i in site_manager["items"]] == [("RXN02", "XRAY")]
    assert other_site.status_code == 403 and nurse.status_code == 403 and anonymous.status_code == 401


# ── MLLP ────────────────────────────────────────────────────────────────────────────────────


def mllp_exchange(stack: Stack, *payloads: bytes) -> list[bytes]:
    address = stack.mllp_address
    assert address is not None
    with MllpClient(address) as client:
        replies = []
        for payload in payloads:
            client.send(payload)
            replies.append(client.receive())
    return replies


async def test_mllp_round_trip(stack: Stack, test_secrets: Secrets, db: asyncpg.Connection) -> None:
    a01 = adt("A01", "MLLP0001").encode()
    with_bom_and_lf = b"\xef\xbb\xbf" + adt("A03", "MLLP0002", pid(), pv1(), sep="\n").encode()
    swap = adt(
        "A17", "MLLP0003", pid(), pv1("AMU^B1^2^RXN01"), pid("9876543210", "K2"), pv1(visit="V2")
    ).encode()
    junk = b"\x00\x01 not hl7 \xff"
    replies = await asyncio.to_thread(mllp_exchange, stack, a01, a01, with_bom_and_lf, swap, junk)
    assert [msa(r)[1:3] for r in replies[:4]] == [
        ["AA", "MLLP0001"],
        ["AA", "MLLP0001"],
        ["AA", "MLLP0002"],
        ["AA", "MLLP0003"],
    ]
    assert replies[1] == replies[0]  # a re-send gets the same answer
    assert msa(replies[4])[1] == "AR"
    types = [
        orjson.loads(r["value"])["event_type"] for r in await db.fetch("SELECT value FROM outbox ORDER BY id")
    ]
    assert types == ["patient.admitted", "patient.discharged", "patient.swapped"]
    assert await db.fetchval("SELECT source FROM raw_message LIMIT 1") == "pas"
    quarantined = await db.fetchrow("SELECT endpoint, body FROM quarantine")
    assert opened(test_secrets, quarantined["body"]) == junk and quarantined["endpoint"].startswith("mllp://")


def test_mllp_answers_several_frames_in_one_write_in_order(stack: Stack) -> None:
    address = stack.mllp_address
    assert address is not None
    frames = b"".join(mllp_frame(adt("A08", f"PIPE{n}").encode()) for n in range(5))
    with MllpClient(address) as client:
        client.sock.sendall(b"noise before a frame" + frames)
        replies = [client.receive() for _ in range(5)]
    assert [msa(r)[2] for r in replies] == [f"PIPE{n}" for n in range(5)]


@pytest.fixture
def locked_stack(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Iterator[Stack]:
    """A stack whose MLLP allow-list does not include loopback."""
    settings = make_settings(
        tmp_path, database_url, broker.bootstrap, secrets_file, ICC_MLLP_SOURCES="192.0.2.10=pas"
    )
    s = Stack(settings)
    s.start_infrastructure()
    s.start_services()
    yield s
    s.stop()


def test_mllp_from_an_address_not_allowed_is_disconnected(locked_stack: Stack) -> None:
    address = locked_stack.mllp_address
    assert address is not None
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(mllp_frame(adt("A01", "NOTALLOWED").encode()))
        sock.settimeout(30)
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:  # closed with the frame unread: the kernel answers with a reset
            answer = b""
        assert answer == b""  # closed without an answer


def test_message_segments_builders_are_shaped_like_the_standard() -> None:
    # guards the fixtures the other tests rely on
    assert msh("A01").split("|")[8] == "ADT^A01^ADT_A01"
    assert pv1().split("|")[19].startswith(VISIT) and evn("A01").startswith("EVN|A01|")


async def test_quarantined_hl7_is_replayed_through_the_same_mapping(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    admin = {"Authorization": f"Bearer {token(test_secrets, Role.admin, 'system:QXN')}"}
    ingest = stack.url_of("ingest")
    no_visit = adt("A01", "RPLY0001", pid(), pv1(visit=""))
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await post(client, stack, test_secrets, no_visit)).status_code == 422
        refused_id = await db.fetchval("SELECT id FROM quarantine WHERE status_code = 422")

        # still wrong: refused again with the ACK it would get, nothing committed, the attempt counted
        again = await client.post(f"{ingest}/v1/quarantine/{refused_id}/replay", headers=admin)
        assert again.status_code == 422 and again.json()["type"].endswith("/replay-failed")
        answer = again.json()["answer"]
        assert answer["ack_code"] == "AE" and answer["errors"][0]["location"] == "PV1-19"
        assert "MSA|AE|RPLY0001" in answer["ack"]
        row = await db.fetchrow("SELECT replay_count, replayed_at FROM quarantine WHERE id = $1", refused_id)
        assert (row["replay_count"], row["replayed_at"]) == (1, None)
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0

        # a message an earlier version refused (here over MLLP) that is acceptable now, kept as that
        # version kept it: not sealed
        a01 = adt("A01", "RPLY0002").encode()
        kept_id = await db.fetchval(
            "INSERT INTO quarantine (source, endpoint, content_type, body, status_code, problem) "
            "VALUES ('pas', 'mllp://0.0.0.0:2575', 'x-application/hl7-v2+er7', $1, 400, '{}') RETURNING id",
            a01,
        )
        replayed = await client.post(f"{ingest}/v1/quarantine/{kept_id}/replay", headers=admin)
        assert replayed.status_code == 200, replayed.text
        body = replayed.json()
        assert body["status"] == "replayed" and body["answer"]["ack_code"] == "AA"
        assert "MSA|AA|RPLY0002" in body["answer"]["ack"]
        events = await db.fetch("SELECT event_id, value FROM outbox")
        assert [str(r["event_id"]) for r in events] == body["event_ids"]
        assert orjson.loads(events[0]["value"])["event_type"] == "patient.admitted"
        assert NHS_NUMBER not in events[0]["value"].decode()
        # the HL7 bookkeeping ran in the replay's transaction: the source re-sending it is a duplicate
        assert await db.fetchval("SELECT count(*) FROM hl7_message WHERE control_id = 'RPLY0002'") == 1
        resent = await post(client, stack, test_secrets, a01)
        assert resent.status_code == 200 and msa(resent.content)[1:3] == ["AA", "RPLY0002"]
        assert await db.fetchval("SELECT count(*) FROM outbox") == 1

        twice = await client.post(f"{ingest}/v1/quarantine/{kept_id}/replay", headers=admin)
        assert twice.status_code == 409 and twice.json()["type"].endswith("/already-replayed")
