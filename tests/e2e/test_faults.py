"""The faults the platform must survive, on the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from icc.embedded import Broker
from icc.stack import Stack
from shared.auth import Role
from shared.organisation import Organisation
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings
from tests.helpers import StreamClient, bed_event, post_signed, shuffled_bed_history, token

pytestmark = pytest.mark.e2e


BED_STATUS = "SELECT summary->'beds'->>$1 FROM ward_state WHERE ward_id = $2"


async def bed_status(db: asyncpg.Connection, bed_id: str) -> str | None:
    """The bed's status as command-centre last published it (None: its ward has not been published)."""
    return await db.fetchval(BED_STATUS, bed_id, bed_id.rsplit("-", 2)[0])


async def bed_becomes(db: asyncpg.Connection, bed_id: str, status: str, timeout: float = 30.0) -> str:
    async def check() -> str | None:
        current = await bed_status(db, bed_id)
        return current if current == status else None

    return await eventually(check, timeout=timeout)


async def test_broker_down_webhook_still_accepted_and_applied_when_back(
    stack: Stack, broker: Broker, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    url = f"{stack.url_of('ingest')}/v1/bed-events"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (
            await post_signed(client, url, test_secrets, bed_event("RXN01-WD10-B1-1", "occupied"))
        ).status_code == 202
        await bed_becomes(db, "RXN01-WD10-B1-1", "occupied")

        broker.stop()
        response = await post_signed(client, url, test_secrets, bed_event("RXN01-WD10-B1-2", "closed"))
        assert response.status_code == 202
        assert (
            await db.fetchval(
                "SELECT count(*) FROM outbox WHERE event_id = $1", uuid.UUID(response.json()["event_id"])
            )
            == 1
        )
        await asyncio.sleep(2)
        assert await bed_status(db, "RXN01-WD10-B1-2") == "unoccupied"

        broker.start()  # same address, new empty log
        await bed_becomes(db, "RXN01-WD10-B1-2", "closed", timeout=90)
        assert await bed_status(db, "RXN01-WD10-B1-1") == "occupied"


async def test_command_centre_killed_mid_stream_gives_identical_state(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection, org: Organisation
) -> None:
    beds = [b.id for b in org.sites_by_id["RXN01"].wards[0].bed_list] + [
        b.id for b in org.sites_by_id["RXN02"].wards[1].bed_list
    ]
    events, expected = shuffled_bed_history(random.Random(7), beds, 600, timedelta(hours=1))

    url = f"{stack.url_of('ingest')}/v1/bed-events"
    async with httpx.AsyncClient(timeout=30) as client:

        async def post_all(chunk: list[dict]) -> None:
            for e in chunk:
                assert (await post_signed(client, url, test_secrets, e)).status_code == 202

        first, second = events[:300], events[300:]
        await asyncio.gather(*(post_all(first[i::8]) for i in range(8)))
        await eventually(lambda: db.fetchval("SELECT count(*) FROM site_event"))
        stack.stop_service("command-centre", signal.SIGKILL)  # mid-stream: no chance to finish cleanly
        await asyncio.gather(*(post_all(second[i::8]) for i in range(8)))
        stack.start_service("command-centre")
        await asyncio.to_thread(stack.wait_ready, "command-centre")

    async def settled() -> bool:
        statuses = {b: await bed_status(db, b) for b in expected}
        return statuses == expected

    await eventually(settled, timeout=90)
    # no double counting: each event applied exactly once, and every ward summary agrees with its beds
    assert await db.fetchval("SELECT count(*) FROM site_event") == len(events)
    for row in await db.fetch("SELECT ward_id, summary FROM ward_state"):
        summary = orjson.loads(row["summary"])
        statuses = summary["beds"]
        counted = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
        assert {k: v for k, v in summary["counts"].items() if v} == counted
        for bed_id, status in statuses.items():
            if bed_id in expected:
                assert status == expected[bed_id]


async def test_broker_restart_with_empty_log_carries_on(
    stack: Stack, broker: Broker, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    url = f"{stack.url_of('ingest')}/v1/bed-events"
    async with httpx.AsyncClient(timeout=10) as client:
        for bed in ("RXN02-W1-B1-1", "RXN02-W1-B1-2"):
            assert (
                await post_signed(client, url, test_secrets, bed_event(bed, "occupied"))
            ).status_code == 202
        await bed_becomes(db, "RXN02-W1-B1-2", "occupied")
        version_before = await db.fetchval("SELECT version FROM ward_state WHERE ward_id = 'RXN02-W1'")

        broker.stop()
        broker.start()  # stored offsets now lie beyond the end of the new, empty log

        watcher = await StreamClient.connect(
            stack.url_of("gateway"), token(test_secrets, Role.wall_display, "ward:RXN02-W1"), "ward:RXN02-W1"
        )
        snapshot = await watcher.next("snapshot")
        assert snapshot["wards"][0]["beds"]["RXN02-W1-B1-2"] == "occupied"
        assert (
            await post_signed(client, url, test_secrets, bed_event("RXN02-W1-B1-3", "closed"))
        ).status_code == 202
        delta, _ = await watcher.until(
            lambda d: d.get("ward", {}).get("beds", {}).get("RXN02-W1-B1-3") == "closed", timeout=90
        )
        assert delta["ward"]["ward_id"] == "RXN02-W1"
        await watcher.close()

    assert await bed_status(db, "RXN02-W1-B1-3") == "closed"
    # the republished events were recognised as applied: one new version for the one new change
    assert (
        await db.fetchval("SELECT version FROM ward_state WHERE ward_id = 'RXN02-W1'") == version_before + 1
    )


EXTERNAL_PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def external_database_url() -> str:
    """A fresh database on the machine's own PostgreSQL server (DATABASE_URL path)."""
    name = f"icc_ext_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(EXTERNAL_PG)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return EXTERNAL_PG.rsplit("/", 1)[0] + f"/{name}"


async def test_external_postgres_via_database_url(
    tmp_path: Path, external_database_url: str, broker: Broker, secrets_file: Path, test_secrets: Secrets
) -> None:
    settings = make_settings(tmp_path, external_database_url, broker.bootstrap, secrets_file)
    stack = Stack(settings)
    await asyncio.to_thread(stack.start_infrastructure)
    assert not stack.embedded_postgres
    try:
        await asyncio.to_thread(stack.start_services)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await post_signed(
                client,
                f"{stack.url_of('ingest')}/v1/bed-events",
                test_secrets,
                bed_event("RXN02-HDU-B1-1", "occupied"),
            )
            assert response.status_code == 202
        conn = await asyncpg.connect(external_database_url)
        try:
            assert (
                await eventually(lambda: conn.fetchval(BED_STATUS, "RXN02-HDU-B1-1", "RXN02-HDU"))
                == "occupied"
            )
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(stack.stop)
