"""The transactional outbox and its relay, on the real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from icc.embedded import Broker
from shared import topics
from shared.db import create_pool
from shared.kafka import ensure_topics
from shared.outbox import APPEND_LOCK, OutboxRelay, append
from tests.conftest import eventually
from tests.integration.support import (
    append_committed,
    bed_envelope,
    bed_envelopes,
    outbox_event,
    outbox_id,
    running,
    try_read_topic,
)

pytestmark = pytest.mark.integration

SITES = ["RXN01", "RXN02", "RXN03", "RXN04", "RXN05", "RXN06"]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url)
    yield p
    await p.close()


def relay_for(database_url: str, broker: Broker) -> OutboxRelay:
    return OutboxRelay(database_url, broker.bootstrap, partitions=3, retention=timedelta(hours=1))


async def outbox_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, event_id, topic, key, value FROM outbox ORDER BY id")


async def published(bootstrap: str, count: int, topic: str = topics.BEDS.name) -> list | None:  # type: ignore[type-arg]
    """The records of `topic` once it holds at least `count` of them."""
    records = await try_read_topic(bootstrap, topic)
    return records if len(records) >= count else None


async def test_relay_publishes_in_outbox_id_order_with_header_and_key(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    envelopes = bed_envelopes(SITES, per_site=5)
    relay = relay_for(database_url, broker)
    async with running(relay):
        # several transactions, some before and some after the relay is up
        for i in range(0, len(envelopes), 4):
            await append_committed(pool, [outbox_event(e) for e in envelopes[i : i + 4]])
        records = await eventually(lambda: published(broker.bootstrap, len(envelopes)), timeout=60)

    rows = {r["id"]: r for r in await outbox_rows(pool)}
    assert len(rows) == len(envelopes)
    assert len(records) == len(envelopes)

    by_partition: dict[int, list[int]] = defaultdict(list)
    partition_of_key: dict[str, int] = {}
    for record in records:
        oid = outbox_id(record)
        assert oid is not None, "every relayed record carries the icc-outbox-id header"
        row = rows[oid]
        assert record.key == row["key"].encode()
        assert record.value == row["value"]
        by_partition[record.partition].append(oid)
        # one key, one partition
        assert partition_of_key.setdefault(row["key"], record.partition) == record.partition

    for partition, ids in by_partition.items():
        assert ids == sorted(ids), f"partition {partition} out of outbox id order: {ids}"
    assert sorted(oid for ids in by_partition.values() for oid in ids) == sorted(rows)
    assert relay.published >= len(envelopes)


async def test_duplicate_event_id_is_stored_once(database_url: str, pool: asyncpg.Pool) -> None:
    event = outbox_event(bed_envelope("RXN01", 1))
    assert await append_committed(pool, [event]) == {event.event_id}
    assert await append_committed(pool, [event]) == set()
    # twice within one call, beside a new event
    other = outbox_event(bed_envelope("RXN01", 2))
    assert await append_committed(pool, [event, other, other]) == {other.event_id}

    rows = await outbox_rows(pool)
    assert Counter(r["event_id"] for r in rows) == {event.event_id: 1, other.event_id: 1}


async def test_late_commit_makes_later_appender_wait_and_is_published_first(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    first = outbox_event(bed_envelope("RXN01", 0))
    a_event = outbox_event(bed_envelope("RXN01", 1))
    b_event = outbox_event(bed_envelope("RXN01", 2))  # same key: same partition as A
    relay = relay_for(database_url, broker)
    async with running(relay):
        await append_committed(pool, [first])
        await eventually(lambda: published(broker.bootstrap, 1), timeout=60)

        conn_a = await asyncpg.connect(database_url)
        conn_b = await asyncpg.connect(database_url)
        b_started = asyncio.Event()
        try:
            tx_a = conn_a.transaction()
            await tx_a.start()
            assert await append(conn_a, [a_event]) == {a_event.event_id}

            async def append_b() -> set:  # type: ignore[type-arg]
                async with conn_b.transaction():
                    b_started.set()
                    return await append(conn_b, [b_event])

            b_task = asyncio.create_task(append_b())
            await asyncio.wait_for(b_started.wait(), 5)

            async def b_waits_for_lock() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 "
                        "AND NOT granted AND pid = $2",
                        APPEND_LOCK,
                        conn_b.get_server_pid(),
                    )
                )

            await eventually(b_waits_for_lock, timeout=10)
            await asyncio.sleep(0.3)  # short and bounded: B must still be blocked behind A
            assert not b_task.done(), "B appended while A still held the append lock"
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 1, "nothing of A or B visible yet"

            await tx_a.commit()
            assert await asyncio.wait_for(b_task, 10) == {b_event.event_id}
        finally:
            await conn_a.close()
            await conn_b.close()

        records = await eventually(lambda: published(broker.bootstrap, 3), timeout=60)

    ids = {r["event_id"]: r["id"] for r in await outbox_rows(pool)}
    assert ids[first.event_id] < ids[a_event.event_id] < ids[b_event.event_id]
    order = [outbox_id(r) for r in records]
    assert order == [ids[first.event_id], ids[a_event.event_id], ids[b_event.event_id]]
    assert len({r.partition for r in records}) == 1


async def test_rows_appended_before_and_during_an_outage_reach_the_new_log(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    before = bed_envelopes(SITES, per_site=2)
    during = bed_envelopes(SITES, per_site=2, start=100)
    relay = relay_for(database_url, broker)
    async with running(relay):
        await append_committed(pool, [outbox_event(e) for e in before])
        await eventually(lambda: published(broker.bootstrap, len(before)), timeout=60)

        await asyncio.to_thread(broker.stop)
        await append_committed(pool, [outbox_event(e) for e in during[:6]])
        await append_committed(pool, [outbox_event(e) for e in during[6:]])
        await asyncio.to_thread(broker.start)  # same address, new empty log

        wanted = {e.event_id for e in before + during}

        async def all_arrived() -> list | None:  # type: ignore[type-arg]
            records = await try_read_topic(broker.bootstrap, topics.BEDS.name)
            rows = {r["id"]: r["event_id"] for r in await outbox_rows(pool)}
            seen = {rows[oid] for r in records if (oid := outbox_id(r)) is not None}
            return records if seen >= wanted else None

        records = await eventually(all_arrived, timeout=90)

    by_partition: dict[int, list[int]] = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(outbox_id(record))  # type: ignore[arg-type]
    for partition, ids in by_partition.items():
        assert ids == sorted(ids), f"partition {partition} out of outbox id order: {ids}"


async def test_only_one_relay_leads_and_nothing_is_published_twice(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    relays = [relay_for(database_url, broker), relay_for(database_url, broker)]
    first = bed_envelopes(SITES, per_site=3)
    second = bed_envelopes(SITES, per_site=3, start=100)

    async def one_leader() -> OutboxRelay | None:
        leaders = [r for r in relays if r.is_leader]
        assert len(leaders) <= 1, "two relays lead at once"
        return leaders[0] if leaders else None

    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
    try:
        leader = await eventually(one_leader, timeout=30)
        for i in range(0, len(first), 3):
            await append_committed(pool, [outbox_event(e) for e in first[i : i + 3]])
        records = await eventually(lambda: published(broker.bootstrap, len(first)), timeout=60)
        for _ in range(10):  # the follower stays a follower while the leader lives
            assert await one_leader() is leader
            await asyncio.sleep(0.05)

        counts = Counter(outbox_id(r) for r in records)
        assert len(counts) == len(first)
        assert set(counts.values()) == {1}, f"published more than once: {counts}"
        follower = relays[1] if leader is relays[0] else relays[0]
        assert follower.published == 0
        assert leader.published == len(first)

        # the follower takes over when the leader stops, from where the leader left off
        index = relays.index(leader)
        stops[index].set()
        await asyncio.wait_for(tasks[index], 30)

        async def follower_leads() -> bool:
            return follower.is_leader

        await eventually(follower_leads, timeout=30)
        await append_committed(pool, [outbox_event(e) for e in second])
        records = await eventually(lambda: published(broker.bootstrap, len(first) + len(second)), timeout=60)
        counts = Counter(outbox_id(r) for r in records)
        assert len(counts) == len(first) + len(second)
        assert set(counts.values()) == {1}, f"published more than once: {counts}"
        assert follower.published == len(second)
    finally:
        for stop in stops:
            stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 30)
