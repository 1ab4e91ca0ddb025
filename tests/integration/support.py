"""Helpers the integration tests share: building events, running services as tasks, reading topics."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shared import topics
from shared.events import BedStatus, BedStatusChanged, Envelope
from shared.kafka import OUTBOX_ID_HEADER
from shared.outbox import OutboxEvent, append


class Runnable(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@contextlib.asynccontextmanager
async def running(service: Runnable, stop_timeout: float = 30.0) -> AsyncIterator[asyncio.Task[None]]:
    """Run `service.run(stop)` as a task; on exit set the stop event and await the task."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout)


def bed_envelope(site_id: str, n: int, status: BedStatus = BedStatus.occupied) -> Envelope:
    bed_id = f"{site_id}-WD1-B{n}"
    return Envelope.wrap(
        BedStatusChanged(ward_id=f"{site_id}-WD1", bed_id=bed_id, status=status),
        occurred_at=datetime.now(UTC),
        source="test",
        site_id=site_id,
        entity_id=bed_id,
    )


def outbox_event(env: Envelope) -> OutboxEvent:
    return OutboxEvent(env.event_id, topics.BEDS.name, env.site_id, env.to_json(), env.event_type)


def bed_envelopes(sites: Sequence[str], per_site: int, start: int = 0) -> list[Envelope]:
    return [bed_envelope(site, start + i) for i in range(per_site) for site in sites]


async def append_committed(pool: asyncpg.Pool, events: Sequence[OutboxEvent]) -> set[uuid.UUID]:
    """Append `events` in one committed transaction."""
    async with pool.acquire() as conn, conn.transaction():
        return await append(conn, events)


def outbox_id(record: Any) -> int | None:
    for name, value in record.headers or ():
        if name == OUTBOX_ID_HEADER:
            return int(value)
    return None


async def read_topic(bootstrap: str, topic: str, idle_ms: int = 400) -> list[Any]:
    """Every record currently in `topic`, partition by partition in offset order.

    Reads until nothing more arrives for `idle_ms` (the embedded broker's end offsets count batches,
    not records, so they cannot tell where a partition ends).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata, so that the partitions are known
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        async with asyncio.timeout(30):
            while batch := await consumer.getmany(*tps, timeout_ms=idle_ms):
                for tp, rs in batch.items():
                    records[tp].extend(rs)
        return [r for tp in tps for r in records[tp]]
    finally:
        await consumer.stop()


async def try_read_topic(bootstrap: str, topic: str) -> list[Any]:
    """`read_topic`, or nothing while the broker is unreachable or still being set up."""
    try:
        return await read_topic(bootstrap, topic)
    except (KafkaError, OSError, TimeoutError):
        return []
