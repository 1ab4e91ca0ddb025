"""StoredOffsetConsumer on the real broker and PostgreSQL: exactly-once application of outbox events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition

from icc.embedded import Broker
from services.command_centre.projection import NOT_OWNED, UNKNOWN_SITE, StateProjection, site_partition
from shared import topics
from shared.consumer import Delivery, StoredOffsetConsumer
from shared.db import create_pool
from shared.events import Envelope
from shared.kafka import ensure_topics, producer
from shared.opel import load_profile
from shared.organisation import Organisation
from shared.outbox import OutboxRelay
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
GROUP = "g"
PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "opel" / "default-profile.yaml"


class RecordingHandler:
    """Counts each application of an event in the `applied` table, so a second one shows."""

    def __init__(self, fail_on: uuid.UUID | None = None) -> None:
        self.fail_on = fail_on
        self.forgotten = 0

    async def apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> Mapping[str, int]:
        for delivery in deliveries:
            if delivery.envelope.event_id == self.fail_on:
                raise RuntimeError(f"cannot apply {delivery.envelope.event_id}")
            await conn.execute(
                "INSERT INTO applied (event_id, n) VALUES ($1, 1) "
                "ON CONFLICT (event_id) DO UPDATE SET n = applied.n + 1",
                delivery.envelope.event_id,
            )
        return {}  # every delivery is its business

    def forget(self) -> None:
        self.forgotten += 1


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url)
    await p.execute("CREATE TABLE applied (event_id uuid PRIMARY KEY, n int NOT NULL)")
    yield p
    await p.close()


def relay_for(database_url: str, broker: Broker) -> OutboxRelay:
    return OutboxRelay(database_url, broker.bootstrap, partitions=3, retention=timedelta(hours=1))


def consumer_for(
    broker: Broker, pool: asyncpg.Pool, handler: RecordingHandler | StateProjection
) -> StoredOffsetConsumer:
    return StoredOffsetConsumer(
        bootstrap=broker.bootstrap,
        pool=pool,
        group_id=GROUP,
        topic_names=[topics.BEDS.name],
        handler=handler,
        partitions=3,
    )


async def applied(pool: asyncpg.Pool) -> dict[uuid.UUID, int]:
    return {r["event_id"]: r["n"] for r in await pool.fetch("SELECT event_id, n FROM applied")}


def all_applied(pool: asyncpg.Pool, envelopes: Sequence[Envelope]):  # type: ignore[no-untyped-def]
    wanted = {e.event_id for e in envelopes}

    async def check() -> dict[uuid.UUID, int] | None:
        counts = await applied(pool)
        return counts if wanted <= counts.keys() else None

    return check


async def dead_letter_rows(pool: asyncpg.Pool) -> int:
    """Dead letters are appended to the outbox in the consumer's transaction: count them there."""
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", topics.DLQ.name))


async def publish(pool: asyncpg.Pool, envelopes: Sequence[Envelope], per_transaction: int = 5) -> None:
    for i in range(0, len(envelopes), per_transaction):
        await append_committed(pool, [outbox_event(e) for e in envelopes[i : i + per_transaction]])


def dead_letters(broker: Broker, count: int):  # type: ignore[no-untyped-def]
    async def check() -> list[dict] | None:  # type: ignore[type-arg]
        records = await try_read_topic(broker.bootstrap, topics.DLQ.name)
        return [orjson.loads(r.value) for r in records] if len(records) >= count else None

    return check


async def test_each_event_applied_once_across_consumer_restarts(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    first = bed_envelopes(SITES, per_site=4)
    second = bed_envelopes(SITES, per_site=3, start=100)

    async with running(relay_for(database_url, broker)):
        consumer = consumer_for(broker, pool, RecordingHandler())
        async with running(consumer):
            await publish(pool, first)
            await eventually(all_applied(pool, first), timeout=90)
        assert consumer.stats.applied == len(first)

        await publish(pool, second)  # while no consumer runs
        again = consumer_for(broker, pool, RecordingHandler())
        async with running(again):
            counts = await eventually(all_applied(pool, first + second), timeout=90)
        # it resumed at the stored offsets: nothing old was read again
        assert again.stats.applied == len(second)
        assert again.stats.skipped_duplicates == 0

    assert counts.keys() == {e.event_id for e in first + second}
    assert set(counts.values()) == {1}, "an event was applied more than once"

    records = await try_read_topic(broker.bootstrap, topics.BEDS.name)
    assert len(records) == len(first) + len(second)
    offsets = await pool.fetch(
        "SELECT partition, next_offset, outbox_hw FROM consumer_offset WHERE group_id = $1 AND topic = $2",
        GROUP,
        topics.BEDS.name,
    )
    assert offsets, "no consumer_offset rows stored"
    for row in offsets:
        in_partition = [r for r in records if r.partition == row["partition"]]
        assert row["next_offset"] == max(r.offset for r in in_partition) + 1
        assert row["outbox_hw"] == max(outbox_id(r) for r in in_partition)  # type: ignore[type-var]
    assert {row["partition"] for row in offsets} == {r.partition for r in records}


async def test_undecodable_record_is_dead_lettered_and_partition_continues(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    site = "RXN01"
    before = [bed_envelope(site, i) for i in range(3)]
    after = [bed_envelope(site, i) for i in range(10, 15)]

    async with running(relay_for(database_url, broker)):
        consumer = consumer_for(broker, pool, RecordingHandler())
        async with running(consumer):
            await publish(pool, before)
            await eventually(all_applied(pool, before), timeout=90)

            raw = producer(broker.bootstrap)
            await raw.start()
            try:
                poison = await raw.send_and_wait(topics.BEDS.name, b"not an envelope", key=site.encode())
            finally:
                await raw.stop()
            await publish(pool, after)

            counts = await eventually(all_applied(pool, before + after), timeout=90)
            letters = await eventually(dead_letters(broker, 1), timeout=60)

    assert set(counts.values()) == {1}
    records = await try_read_topic(broker.bootstrap, topics.BEDS.name)
    good = [r for r in records if outbox_id(r) is not None]
    assert {r.partition for r in good} == {poison.partition}, "one key, one partition"
    assert any(r.offset > poison.offset for r in good), "good records follow the poison one"

    assert await dead_letter_rows(pool) == 1
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reason"].startswith("undecodable"), letter
    assert letter["value"] == "not an envelope"
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        topics.BEDS.name,
        poison.partition,
        poison.offset,
    )
    assert consumer.stats.dead_lettered == 1


async def test_event_the_handler_rejects_is_dead_lettered_others_applied_once(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    envelopes = bed_envelopes(SITES, per_site=3)
    bad = envelopes[7]
    good = [e for e in envelopes if e is not bad]

    async with running(relay_for(database_url, broker)):
        handler = RecordingHandler(fail_on=bad.event_id)
        consumer = consumer_for(broker, pool, handler)
        async with running(consumer):
            await publish(pool, envelopes, per_transaction=len(envelopes))
            letters = await eventually(dead_letters(broker, 1), timeout=90)
            counts = await eventually(all_applied(pool, good), timeout=60)

    assert bad.event_id not in counts
    assert counts.keys() == {e.event_id for e in good}
    assert set(counts.values()) == {1}, "a retried batch left a partial application behind"

    assert await dead_letter_rows(pool) == 1
    assert len(letters) == 1
    letter = letters[0]
    assert "handler failed" in letter["reason"], letter
    assert letter["value"]["event_id"] == str(bad.event_id)
    assert consumer.stats.dead_lettered == 1
    assert handler.forgotten >= 1


async def test_broker_reset_applies_new_events_and_skips_republished_ones(
    database_url: str, broker: Broker, pool: asyncpg.Pool
) -> None:
    await ensure_topics(broker.bootstrap, 3)
    old = bed_envelopes(SITES, per_site=3)
    new = bed_envelopes(SITES, per_site=3, start=100)

    async with running(relay_for(database_url, broker)):
        consumer = consumer_for(broker, pool, RecordingHandler())
        async with running(consumer):
            await publish(pool, old)
            await eventually(all_applied(pool, old), timeout=90)

            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)  # same address, new empty log
            await publish(pool, new)

            counts = await eventually(all_applied(pool, old + new), timeout=90)

            async def old_ones_replayed() -> bool:
                # the relay republished the retained rows; the consumer read and skipped them
                records = await try_read_topic(broker.bootstrap, topics.BEDS.name)
                return len(records) >= len(old) + len(new) and consumer.stats.skipped_duplicates >= len(old)

            await eventually(old_ones_replayed, timeout=60)
            counts = await applied(pool)

    assert counts.keys() == {e.event_id for e in old + new}
    assert set(counts.values()) == {1}, f"applied twice after the reset: {counts}"
    assert consumer.stats.applied == len(old) + len(new)


async def test_events_for_sites_not_applied_here_are_set_aside_and_counted(
    database_url: str,
    broker: Broker,
    pool: asyncpg.Pool,
    org: Organisation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event for a site outside the organisation is counted apart from the applied ones and
    reported once; an event for a site another replica owns never starts a second copy of its state."""
    caplog.set_level(logging.WARNING, logger="services.command_centre.projection")
    await ensure_topics(broker.bootstrap, 3)
    known = bed_envelopes(["RXN01"], per_site=4)
    unknown = bed_envelopes(["ZZZ99"], per_site=3)
    projection = StateProjection(org, load_profile(PROFILE), partitions=3)

    async with running(relay_for(database_url, broker)):
        consumer = consumer_for(broker, pool, projection)
        async with running(consumer):
            await publish(pool, unknown + known, per_transaction=2)

            async def all_consumed() -> bool:
                return consumer.stats.applied + consumer.stats.set_aside.total() >= len(known + unknown)

            await eventually(all_consumed, timeout=90)

    assert consumer.stats.applied == len(known)
    assert consumer.stats.set_aside == Counter({UNKNOWN_SITE: len(unknown)})
    stored = await pool.fetch("SELECT site_id, count(*) AS n FROM site_event GROUP BY site_id")
    assert {r["site_id"]: r["n"] for r in stored} == {"RXN01": len(known)}

    # ownership moved to RXN01's partition alone: RXN02's events are not this replica's to apply
    home = site_partition("RXN01", 3)
    assert site_partition("RXN02", 3) != home
    projection.assigned([TopicPartition(topics.BEDS.name, home)], {topics.BEDS.name: 3})
    others = [
        Delivery(topics.BEDS.name, site_partition("RXN02", 3), n, 1000 + n, e, e.to_json())
        for n, e in enumerate(bed_envelopes(["RXN02"], per_site=2) * 2)
    ]
    async with pool.acquire() as conn, conn.transaction():
        assert await projection.apply(conn, others) == Counter({NOT_OWNED: len(others)})
    assert "RXN02" not in projection.sites
    assert await pool.fetchval("SELECT count(*) FROM site_event WHERE site_id = 'RXN02'") == 0

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("ZZZ99" in w for w in warnings) == 1, warnings
    assert sum("RXN02" in w for w in warnings) == 1, warnings
