"""The transactional outbox and its relay to Kafka.

Writers append events in the same transaction as whatever produced them. Each appending
transaction first takes one advisory lock, so outbox ids are handed out and committed in the same
order: the relay reads `id > last published` and can never skip a row that commits late.

One relay is active at a time (a session advisory lock elects it); any service may host one.
It publishes in id order, records its position after the broker acknowledged, and on a broker
that lost its log (new incarnation) starts again from the oldest retained row; consumers skip
what they already applied by the outbox id carried in each record's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from shared.kafka import OUTBOX_ID_HEADER, IncarnationProbe, producer, stop_client
from shared.supervise import supervise

log = logging.getLogger(__name__)

APPEND_LOCK = 7_160_002
RELAY_LOCK = 7_160_003
NOTIFY_CHANNEL = "icc_outbox"


@dataclass(frozen=True)
class OutboxEvent:
    event_id: uuid.UUID
    topic: str
    key: str
    value: bytes
    event_type: str = ""


async def append(
    conn: asyncpg.Connection, events: Sequence[OutboxEvent], *, locked: bool = False
) -> set[uuid.UUID]:
    """Add events inside the caller's transaction; return the ids that were new (not duplicates).

    `locked`: the caller already holds `APPEND_LOCK` in this transaction (one round trip fewer).
    """
    if not events:
        return set()
    if not locked:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
    # the relay is woken in the same statement, and only when something was new
    rows = await conn.fetch(
        """
        WITH added AS (
            INSERT INTO outbox (event_id, topic, key, value)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), woken AS (
            SELECT pg_notify($5, '') WHERE EXISTS (SELECT 1 FROM added)
        )
        SELECT event_id FROM added
        UNION ALL
        SELECT NULL FROM woken
        """,
        [e.event_id for e in events],
        [e.topic for e in events],
        [e.key for e in events],
        [e.value for e in events],
        NOTIFY_CHANNEL,
    )
    return {r["event_id"] for r in rows if r["event_id"] is not None}


async def _publish(prod: AIOKafkaProducer, rows: Sequence[asyncpg.Record]) -> list[asyncio.Future[Any]]:
    """Queue rows (in id order) as record batches, one open batch per partition; return the batches' futures.

    The same records, partitions and per-partition order as one `send` per row, without the per-record
    overhead of `send` (a future, a metadata wait and a murmur2 hash each). The partition of a key is
    what aiokafka's default partitioner gives `send`: murmur2 of the key over the topic's partitions,
    in the order the producer's metadata lists them.
    """
    futures: list[asyncio.Future[Any]] = []
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    partition_of: dict[tuple[str, bytes], int] = {}
    open_batches: dict[tuple[str, int], BatchBuilder] = {}
    for r in rows:
        topic, key = r["topic"], r["key"].encode()
        partition = partition_of.get((topic, key))
        if partition is None:
            if topic not in partitions:
                partitions[topic] = list(await prod.partitions_for(topic))
            partition = partition_of[topic, key] = partitioner(key, partitions[topic], partitions[topic])
        headers = [(OUTBOX_ID_HEADER, str(r["id"]).encode())]
        batch = open_batches.get((topic, partition))
        if batch is None or batch.append(key=key, value=r["value"], timestamp=None, headers=headers) is None:
            if batch is not None:  # full: queue it, and start the partition's next batch
                futures.append(await prod.send_batch(batch, topic, partition=partition))
            batch = open_batches[topic, partition] = prod.create_batch()
            # a batch's first record is always taken, whatever its size
            batch.append(key=key, value=r["value"], timestamp=None, headers=headers)
    for (topic, partition), batch in open_batches.items():
        futures.append(await prod.send_batch(batch, topic, partition=partition))
    return futures


class OutboxRelay:
    """Publishes the outbox to Kafka in commit order; survives broker outages and broker resets."""

    def __init__(
        self,
        database_url: str,
        bootstrap: str,
        *,
        partitions: int,
        retention: timedelta,
        name: str = "main",
        batch_size: int = 5000,
    ) -> None:
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.retention = retention
        self.name = name
        self.batch_size = batch_size
        self.is_leader = False
        self.published = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set: elect, then relay; on a broker or database failure, back off and retry."""
        await supervise("outbox relay", lambda: self._lead(stop), stop, max_backoff=5.0)

    async def _lead(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                self.is_leader = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
                if stop.is_set():
                    return
            self.is_leader = True
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
            await self._relay(conn, stop)
        finally:
            self.is_leader = False
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await conn.close(timeout=2)

    async def _relay(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        probe = IncarnationProbe(self.bootstrap, self.partitions)
        # No linger: a batch is sent in one go and awaited as a whole, so waiting for more records
        # only delays it; records that arrive while a request is in flight are batched anyway.
        prod = producer(self.bootstrap, linger_ms=0)
        try:
            await prod.start()
            loop = asyncio.get_running_loop()
            # The incarnation the position is for, and when the marker was last read. Nothing is sent without
            # reading the marker just before (a batch must not reach a new, empty log ahead of the older rows
            # that are republished to it) and after; an idle wake-up reads it only when a second has passed.
            known = await probe.current()
            probed_at = loop.time()
            last_id = await self._position(conn, known)
            pruned_at = 0.0
            while not stop.is_set():
                self._wake.clear()
                rows = await conn.fetch(
                    "SELECT id, topic, key, value FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
                    last_id,
                    self.batch_size,
                )
                if not rows:
                    if loop.time() - pruned_at > 60:
                        await self._prune(conn)
                        pruned_at = loop.time()
                    # NOTIFY wakes us at once; the timeout also notices a broker reset while idle
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                    if loop.time() - probed_at >= 1.0:
                        known = await probe.current()
                        probed_at = loop.time()
                        last_id = await self._position(conn, known)
                    continue
                # Never send to a log other than the one `last_id` belongs to: a new, empty log
                # must get the retained outbox from its start, in order.
                before = await probe.current()
                if before != known:
                    # the broker lost its log while we were idle: start again from the oldest retained row
                    known = before
                    last_id = await self._position(conn, before)
                    continue
                await asyncio.gather(*await _publish(prod, rows))
                after = await probe.current()
                probed_at = loop.time()
                if after != before:
                    log.warning("broker changed incarnation during a batch; republishing retained outbox")
                    known = after
                    last_id = await self._position(conn, after)
                    continue
                last_id = rows[-1]["id"]
                await conn.execute(
                    "UPDATE relay_position SET last_id = $2, updated_at = now() WHERE name = $1",
                    self.name,
                    last_id,
                )
                self.published += len(rows)
        finally:
            await stop_client(prod)
            await probe.close()

    async def _position(self, conn: asyncpg.Connection, incarnation: str) -> int:
        """The last published id for this broker incarnation; a new incarnation starts over."""
        row = await conn.fetchrow(
            "SELECT last_id, broker_incarnation FROM relay_position WHERE name = $1", self.name
        )
        if row is not None and row["broker_incarnation"] == incarnation:
            return int(row["last_id"])
        start = int(await conn.fetchval("SELECT coalesce(min(id), 1) - 1 FROM outbox"))
        if row is not None:
            log.warning("new broker incarnation %s: republishing outbox from id %d", incarnation, start + 1)
        await conn.execute(
            """
            INSERT INTO relay_position (name, last_id, broker_incarnation) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET last_id = $2, broker_incarnation = $3, updated_at = now()
            """,
            self.name,
            start,
            incarnation,
        )
        return start

    async def _prune(self, conn: asyncpg.Connection) -> None:
        """Drop published rows older than the retention (they also serve as the event-id dedup window)."""
        await conn.execute(
            """
            DELETE FROM outbox WHERE created_at < now() - $1::interval
              AND id <= (SELECT last_id FROM relay_position WHERE name = $2)
            """,
            self.retention,
            self.name,
        )
