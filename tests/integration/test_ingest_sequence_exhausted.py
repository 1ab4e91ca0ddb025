"""A database that has run out of ids (a sequence at its maximum value, SQLSTATE 2200H) is the
database failing, not the message: every interface answers "send it again" (503 with Retry-After, HL7
AR with ERR 207), nothing is kept in the quarantine as the sender's fault, and once the sequence is
raised the same messages are taken.

PostgreSQL reports it as a data exception, as it does a NUL in text, which is the message's fault.
The sequence is made to run out for real: its maximum value set to the last value it gave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from icc.embedded import Broker
from services.ingest.group_commit import GroupCommitWriter, Inbound
from shared.db import create_pool
from shared.sealed import Sealer, new_key
from shared.secrets_store import Secrets
from tests.conftest import make_settings
from tests.e2e.ingest_support import post
from tests.e2e.test_ingest_bounds import INTERFACES
from tests.e2e.test_ingest_poison import database_refuses, err_code, marked
from tests.hl7_samples import segments_of
from tests.integration.ingest_in_process import ingest_app
from tests.integration.support import bed_envelope, outbox_event

pytestmark = pytest.mark.integration

SEQUENCE_EXHAUSTED = "2200H"


@asynccontextmanager
async def out_of_ids(conn: asyncpg.Connection, table: str, spare: int = 0) -> AsyncIterator[None]:
    """`table`'s id sequence gives `spare` more ids, then fails; raised again on leaving."""
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
    last = await conn.fetchval("SELECT setval($1, nextval($1) + 1000)", sequence)  # above MINVALUE
    await conn.execute(f"ALTER SEQUENCE {sequence} MAXVALUE {last + spare}")
    try:
        yield
    finally:
        await conn.execute(f"ALTER SEQUENCE {sequence} NO MAXVALUE")


async def test_every_interface_answers_send_it_again_and_keeps_nothing(
    tmp_path: Path,
    database_url: str,
    broker: Broker,
    secrets_file: Path,
    test_secrets: Secrets,
    db: asyncpg.Connection,
) -> None:
    settings = make_settings(tmp_path, database_url, broker.bootstrap, secrets_file)
    bodies = {name: interface.body(datetime.now(UTC)) for name, interface in INTERFACES.items()}
    async with ingest_app(settings) as (client, _):

        async def send(name: str) -> httpx.Response:
            interface = INTERFACES[name]
            return await post(
                client,
                interface.endpoint,
                test_secrets,
                bodies[name],
                source=interface.source,
                content_type=interface.content_type,
            )

        async with out_of_ids(db, "raw_message"):
            refused = {name: await send(name) for name in INTERFACES}
        for name, response in refused.items():
            assert response.status_code == 503, (name, response.text)
            assert response.headers["retry-after"].isdigit(), name
            if name == "hl7v2":
                ack = segments_of(response.content)
                assert ack["MSA"][0][1] == "AR" and err_code(ack) == "207", response.text
            elif name == "fhir":
                assert [i["code"] for i in response.json()["issue"]] == ["transient"], response.text
            else:
                assert response.json()["type"].endswith("/unavailable"), response.text
        # nothing was wrong with the messages: none is kept, and each is taken once there are ids again
        assert await db.fetchval("SELECT count(*) FROM quarantine") == 0
        assert await db.fetchval("SELECT count(*) FROM raw_message") == 0
        for name in INTERFACES:
            response = await send(name)
            assert response.status_code in (200, 202), (name, response.text)
        assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


def inbound(n: int, content_type: str = "text/plain") -> Inbound:
    return Inbound("test", "/test", content_type, b"body %d" % n, [outbox_event(bed_envelope("RXN01", n))])


@asynccontextmanager
async def writing(database_url: str) -> AsyncIterator[GroupCommitWriter]:
    """A group-commit writer running on a pool of its own."""
    pool = await create_pool(database_url)
    writer = GroupCommitWriter(pool, sealer=Sealer(new_key()))
    running = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()


async def outcomes(writer: GroupCommitWriter, items: list[Inbound]) -> list[object]:
    """What each item's submitter gets, the items queued together (the idle writer takes them as
    one batch: it runs only once they are all queued)."""
    for item in items:
        writer.queue.put_nowait(item)
    return list(await asyncio.gather(*(item.done for item in items), return_exceptions=True))


def sqlstates(results: list[object]) -> list[str]:
    """Each outcome: "set" (committed), "Unstorable" (refused as the message's fault), or the SQLSTATE
    of a database error handed back as it is (answered "send it again")."""
    named = []
    for result in results:
        if isinstance(result, asyncpg.PostgresError):
            named.append(str(result.sqlstate))
        else:
            named.append(type(result).__name__)
    return named


async def test_a_batch_out_of_ids_fails_whole_as_the_database_failing(
    database_url: str, db: asyncpg.Connection
) -> None:
    async with writing(database_url) as writer:
        async with out_of_ids(db, "raw_message"):
            results = await outcomes(writer, [inbound(n) for n in range(3)])
        assert sqlstates(results) == [SEQUENCE_EXHAUSTED] * 3
        # and the writer goes on once there are ids again
        assert len(await writer.submit(inbound(3))) == 1


async def test_running_out_of_ids_while_isolating_a_refused_message_is_the_database_failing(
    database_url: str, db: asyncpg.Connection
) -> None:
    """The batch fails on one message's data, so its messages are committed one by one; ids run out
    after the first: the others are told to send again, none is refused as its own fault."""
    marker = "REFUSED"
    items = [inbound(0), inbound(1), inbound(2, marked("text/plain", marker))]
    async with writing(database_url) as writer:
        # the batch takes three ids before the third message is refused, the first message one more
        async with database_refuses(db, marker), out_of_ids(db, "raw_message", spare=4):
            results = await outcomes(writer, items)
    assert sqlstates(results) == ["set", SEQUENCE_EXHAUSTED, SEQUENCE_EXHAUSTED]
