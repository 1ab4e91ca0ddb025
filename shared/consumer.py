"""A Kafka consumer whose offsets live in PostgreSQL, beside the state it produces.

Each batch is applied in one database transaction together with the consumed offsets and the
highest outbox id applied per partition. Nothing is committed to Kafka. On (re)assignment the
consumer seeks to the stored offsets; on a broker that lost its log (new incarnation) it starts the
partition from the beginning and skips, by outbox id, everything it had already applied.

Undecodable records are dead-lettered (kept in `icc.dlq.v1` through the outbox) in the same
transaction; a batch whose handler fails is retried with backoff, then applied record by record so
that only the poison record is dead-lettered and the partition never stalls.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from pydantic import ValidationError

from shared import topics
from shared.events import Envelope
from shared.kafka import FETCH_WAIT_MS, OUTBOX_ID_HEADER, IncarnationProbe, stop_client
from shared.outbox import OutboxEvent, append
from shared.supervise import supervise

log = logging.getLogger(__name__)

# A handler may own keys rather than partitions (the command centre owns sites, and a site's events
# come on the same partition number of two topics). The range assignor gives one member the same
# partition numbers of every topic with the same partition count; aiokafka's default, round robin,
# deals the partitions of all topics in one sequence and splits a key between members whenever the
# member count does not divide the partition count evenly (4 members on 6 partitions, 2 on 3). Range
# alone, without round robin as a fallback: a group of mixed versions then fails to agree on a
# strategy rather than settling on the one that splits keys.
PARTITION_ASSIGNORS = (RangePartitionAssignor,)


class Delivery(NamedTuple):
    """One decoded record, as a handler sees it (a tuple: built once per event, cheaply)."""

    topic: str
    partition: int
    offset: int
    outbox_id: int
    envelope: Envelope
    raw: bytes = b""


Batch = dict[TopicPartition, list[Any]]  # aiokafka's getmany: records by partition
Decoded = dict[TopicPartition, list["Envelope | str"]]  # each record's envelope, or why it has none


class BatchHandler(Protocol):
    async def apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> Mapping[str, int]:
        """Apply deliveries inside the caller's transaction (no commit, no Kafka).

        Returns how many deliveries it set aside unapplied (not its business), by reason: they are
        counted apart from the applied ones once the transaction commits.
        """

    def forget(self) -> None:
        """Drop any in-memory state: partitions moved, the database is the truth again."""


@dataclass
class _PartitionPosition:
    next_offset: int
    outbox_hw: int


@dataclass
class ConsumerStats:
    applied: int = 0
    set_aside: Counter[str] = field(default_factory=Counter)  # by the handler's reason
    skipped_duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    resets: int = 0
    listeners: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: StoredOffsetConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.owner.applying:  # let a batch in flight commit first
            self.owner.positions = {}
            self.owner.handler.forget()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.owner.applying:
            await self.owner.restore(assigned)


class StoredOffsetConsumer:
    def __init__(
        self,
        *,
        bootstrap: str,
        pool: asyncpg.Pool,
        group_id: str,
        topic_names: Sequence[str],
        handler: BatchHandler,
        partitions: int,
        max_records: int = 2000,
        max_attempts: int = 4,
        fetch_wait_ms: int = FETCH_WAIT_MS,
    ) -> None:
        self.bootstrap = bootstrap
        self.pool = pool
        self.group_id = group_id
        self.topic_names = list(topic_names)
        self.handler = handler
        self.max_records = max_records
        self.max_attempts = max_attempts
        self.fetch_wait_ms = fetch_wait_ms
        self.stats = ConsumerStats()
        self.incarnation = ""
        self.positions: dict[TopicPartition, _PartitionPosition] = {}
        self._probe = IncarnationProbe(bootstrap, partitions)
        self._consumer: AIOKafkaConsumer | None = None
        self.running = False
        # A batch and a rebalance never interleave: positions read from the database must
        # include any batch that was committing when the partitions moved.
        self.applying = asyncio.Lock()

    async def restore(self, assigned: list[TopicPartition]) -> None:
        """Seek each assigned partition to the offset stored with the state.

        Until this returns, nothing is applied: aiokafka may hand out records of a new assignment
        while this listener still runs, fetched from the wrong place. Only partitions in
        `positions` are applied, and `positions` is filled last.
        """
        assert self._consumer is not None
        self.positions = {}
        self.handler.forget()
        self.incarnation = await self._probe.current()
        rows = await self.pool.fetch(
            "SELECT topic, partition, next_offset, outbox_hw, broker_incarnation FROM consumer_offset "
            "WHERE group_id = $1",
            self.group_id,
        )
        stored = {TopicPartition(r["topic"], r["partition"]): r for r in rows}
        positions: dict[TopicPartition, _PartitionPosition] = {}
        for tp in assigned:
            row = stored.get(tp)
            if row is None:
                positions[tp] = _PartitionPosition(0, 0)
            elif row["broker_incarnation"] == self.incarnation:
                positions[tp] = _PartitionPosition(row["next_offset"], row["outbox_hw"])
            else:
                log.warning("%s: broker has a new log; reading from its start, skipping applied events", tp)
                self.stats.resets += 1
                positions[tp] = _PartitionPosition(0, row["outbox_hw"])
            self._consumer.seek(tp, positions[tp].next_offset)
        self.positions = positions
        on_assigned = getattr(self.handler, "assigned", None)
        if on_assigned is not None:
            # the real partition counts: a broker may have auto-created a topic with its own default
            counts = {t: len(self._consumer.partitions_for_topic(t) or ()) for t in self.topic_names}
            on_assigned(list(assigned), counts)

    async def run(self, stop: asyncio.Event) -> None:
        await supervise(f"consumer {self.group_id}", lambda: self._consume(stop), stop, first_backoff=0.5)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=self.fetch_wait_ms,
            partition_assignment_strategy=PARTITION_ASSIGNORS,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            consumer.subscribe(self.topic_names, listener=_Rebalance(self))
            self.running = True
            loop = asyncio.get_running_loop()
            checked = loop.time()
            # One batch commits while the next is fetched and decoded: the database works on one
            # core while this process decodes on the other. Commits stay strictly in order.
            committing: asyncio.Task[None] | None = None
            try:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                    if batch:
                        decoded = {tp: [_decode(r) for r in records] for tp, records in batch.items()}
                        if committing is not None:
                            await committing
                        committing = asyncio.create_task(self._apply_in_order(batch, decoded))
                    elif loop.time() - checked > 2.0:
                        checked = loop.time()
                        await self._check_incarnation()
            finally:
                if committing is not None:
                    await committing  # a batch in flight finishes (or raises) before the client stops
        finally:
            self.running = False
            self._consumer = None
            await stop_client(consumer)
            await self._probe.close()

    async def _check_incarnation(self) -> None:
        """A broker that restarted empty never reports our positions out of range: look for it."""
        current = await self._probe.current()
        if current != self.incarnation and self._consumer is not None:
            async with self.applying:
                await self.restore(list(self._consumer.assignment()))

    async def _apply_in_order(self, batch: Batch, decoded: Decoded) -> None:
        async with self.applying:
            await self._apply(batch, decoded)
        for listener in self.stats.listeners:
            await listener()

    async def _apply(self, batch: Batch, decoded: Decoded) -> None:
        """Positions are checked here, in commit order, not when decoding: a rebalance may have
        moved them in between."""
        deliveries: list[Delivery] = []
        dead: list[OutboxEvent] = []
        touched: dict[TopicPartition, _PartitionPosition] = {}
        for tp, records in batch.items():
            position = self.positions.get(tp)
            if position is None:
                continue  # not (yet) restored: it will come again
            for record, envelope in zip(records, decoded[tp], strict=True):
                if record.offset < position.next_offset:
                    continue  # fetched before the seek: it will come again
                outbox_id = _outbox_id(record.headers)
                position.next_offset = record.offset + 1
                touched[tp] = position
                if outbox_id is not None and outbox_id <= position.outbox_hw:
                    self.stats.skipped_duplicates += 1
                    continue
                if outbox_id is not None:
                    position.outbox_hw = outbox_id
                if isinstance(envelope, str):
                    dead.append(_dead_letter(record, envelope))
                    continue
                deliveries.append(
                    Delivery(tp.topic, tp.partition, record.offset, outbox_id or 0, envelope, record.value)
                )

        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._commit(deliveries, dead, touched, isolate=attempt == self.max_attempts)
                return
            except asyncpg.PostgresError:
                raise
            except Exception as exc:  # a handler bug or a poison event: retry, then isolate it
                log.warning("batch failed (attempt %d/%d): %r", attempt, self.max_attempts, exc)
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))

    async def _commit(
        self,
        deliveries: list[Delivery],
        dead: list[OutboxEvent],
        touched: dict[TopicPartition, _PartitionPosition],
        *,
        isolate: bool,
    ) -> None:
        """One transaction: the state changes, dead letters and offsets, or nothing at all.

        With `isolate`, each record is applied in its own savepoint and a failing one is dead-lettered.
        """
        dead = list(dead)
        handled = 0
        set_aside: Counter[str] = Counter()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if isolate:
                    for delivery in deliveries:
                        try:
                            async with conn.transaction():
                                set_aside.update(await self.handler.apply(conn, [delivery]))
                            handled += 1
                        except asyncpg.PostgresError:
                            raise
                        except Exception as exc:  # this record alone fails: keep it, move on
                            self.handler.forget()
                            dead.append(_dead_letter_envelope(delivery, f"handler failed: {exc!r}"))
                elif deliveries:
                    set_aside.update(await self.handler.apply(conn, deliveries))
                    handled = len(deliveries)
                if dead:
                    await append(conn, dead)
                await conn.executemany(
                    """
                    INSERT INTO consumer_offset
                        (group_id, topic, partition, next_offset, outbox_hw, broker_incarnation)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (group_id, topic, partition) DO UPDATE
                    SET next_offset = $4, outbox_hw = $5, broker_incarnation = $6, updated_at = now()
                    """,
                    [
                        (self.group_id, tp.topic, tp.partition, p.next_offset, p.outbox_hw, self.incarnation)
                        for tp, p in touched.items()
                    ],
                )
        except BaseException:
            # memory may hold changes the database rolled back: the database is the truth
            self.handler.forget()
            raise
        self.stats.applied += handled - set_aside.total()
        self.stats.set_aside.update(set_aside)
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1


def _decode(record: object) -> Envelope | str:
    """The record's envelope, or why it cannot be one (the record is then dead-lettered)."""
    try:
        return Envelope.from_json(getattr(record, "value", b"") or b"")
    except (ValidationError, ValueError) as exc:
        return f"undecodable: {exc}"


def _outbox_id(headers: Sequence[tuple[str, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == OUTBOX_ID_HEADER:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _dead_letter(record: object, reason: str) -> OutboxEvent:
    value = getattr(record, "value", b"") or b""
    body = orjson.dumps(
        {
            "reason": reason,
            "topic": getattr(record, "topic", ""),
            "partition": getattr(record, "partition", -1),
            "offset": getattr(record, "offset", -1),
            "value": bytes(value).decode("utf-8", "replace"),
        }
    )
    key = bytes(getattr(record, "key", b"") or b"").decode("utf-8", "replace")
    return OutboxEvent(uuid.uuid4(), topics.DLQ.name, key, body)


def _dead_letter_envelope(delivery: Delivery, reason: str) -> OutboxEvent:
    body = orjson.dumps(
        {
            "reason": reason,
            "topic": delivery.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "value": delivery.envelope.model_dump(mode="json"),
        }
    )
    return OutboxEvent(uuid.uuid4(), topics.DLQ.name, delivery.envelope.site_id, body)
