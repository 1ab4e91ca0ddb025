"""Kafka plumbing on aiokafka: topics, producers, and the broker incarnation marker.

ICC never relies on broker-side idempotence or transactions (the embedded broker refuses both).
A broker may also lose its whole log (the embedded one keeps nothing across a restart), so every
broker incarnation writes a marker record at offset 0 of `icc.meta.v1`; services compare it with
what they stored to notice a new, empty log (ADR 0002).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared import topics

log = logging.getLogger(__name__)

OUTBOX_ID_HEADER = "icc-outbox-id"
# How long a consumer's fetch may wait at the broker for data (`ICC_KAFKA_FETCH_WAIT_MS`). The
# embedded broker answers a long-poll fetch only when its wait expires, not when data arrives, so by
# default consumers wait briefly: every hop of the pipeline costs up to this much latency (half of it
# on average), and each consumer asks the broker 1000/FETCH_WAIT_MS times a second when idle. A Kafka
# broker answers as soon as data arrives: there, a long wait (500 ms) costs no latency and spares
# that idle polling.
FETCH_WAIT_MS = 10
EVENT_TYPE_HEADER = "icc-event-type"


async def ensure_topics(bootstrap: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                t.name,
                num_partitions=topics.partitions_for(t, partitions),
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if t.compacted else {},
            )
            for t in topics.ALL
            if t.name not in existing
        ]
        for topic in wanted:
            # one at a time: a concurrent creator makes ours fail, which is fine
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


def producer(bootstrap: str, **overrides: object) -> AIOKafkaProducer:
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": False,
        "acks": "all",
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 200,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class IncarnationProbe:
    """Reads (and on a fresh broker, creates) the broker incarnation marker."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._consumer: AIOKafkaConsumer | None = None
        self._tp = TopicPartition(topics.META.name, 0)

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
            )
            await consumer.start()
            consumer.assign([self._tp])
            self._consumer = consumer
        return self._consumer

    async def _read_marker(self) -> str | None:
        consumer = await self._reader()
        consumer.seek(self._tp, 0)
        batch = await consumer.getmany(self._tp, timeout_ms=300, max_records=1)
        for record in batch.get(self._tp, []):
            if record.offset == 0 and record.value:
                return bytes(record.value).decode()
        return None

    async def current(self) -> str:
        """The incarnation of the broker we are connected to, creating topics and marker if new."""
        marker = await self._read_marker()
        if marker is not None:
            return marker
        await ensure_topics(self.bootstrap, self.partitions)
        marker = await self._read_marker()
        if marker is not None:
            return marker
        async with _started(producer(self.bootstrap)) as prod:
            await prod.send_and_wait(topics.META.name, str(uuid.uuid4()).encode(), partition=0)
        for _ in range(20):
            # offset 0 wins when two services create the marker at once
            marker = await self._read_marker()
            if marker is not None:
                log.info("broker incarnation %s", marker)
                return marker
            await asyncio.sleep(0.1)
        raise KafkaError("broker incarnation marker not readable after writing it")

    async def close(self) -> None:
        if self._consumer is not None:
            await stop_client(self._consumer)
            self._consumer = None


@contextlib.asynccontextmanager
async def _started(prod: AIOKafkaProducer):  # type: ignore[no-untyped-def]
    try:
        await prod.start()
        yield prod
    finally:
        await stop_client(prod)


async def broker_ready(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2_000)
    try:
        await asyncio.wait_for(admin.start(), 3)
        await asyncio.wait_for(admin.list_topics(), 3)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop an aiokafka client whose broker may be gone.

    aiokafka's stop() can let the cancellation of its own fetch task escape as CancelledError; that
    must not end the caller (a supervisor that would then stop for good), unless the caller itself
    is being cancelled.
    """
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("aiokafka client stopped with a stray cancellation (broker gone)")
