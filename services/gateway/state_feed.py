"""Keeps the gateway's live state current: a seed from PostgreSQL, then the state topic read whole.

No consumer group: every replica reads every partition (broadcast). A broker that lost its log is
noticed by its incarnation marker and read again from the start; versions make re-reads harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.gateway.live_state import LiveState
from shared import topics
from shared.kafka import IncarnationProbe

log = logging.getLogger(__name__)


async def seed_from_database(pool: asyncpg.Pool, live: LiveState) -> None:
    for row in await pool.fetch("SELECT summary FROM ward_state"):
        live.seed(row["summary"])


class StateFeed:
    def __init__(self, bootstrap: str, live: LiveState, *, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.live = live
        self.partitions = partitions
        self.undecodable = 0
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._follow(stop)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("state feed: %s; retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def _follow(self, stop: asyncio.Event) -> None:
        probe = IncarnationProbe(self.bootstrap, self.partitions)
        incarnation = await probe.current()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topics.STATE.name) or set()
            if not parts:
                await consumer.force_metadata_update()
                parts = consumer.partitions_for_topic(topics.STATE.name) or set()
            assigned = [TopicPartition(topics.STATE.name, p) for p in sorted(parts)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            self.running = True
            loop = asyncio.get_running_loop()
            checked = loop.time()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batch.values():
                    for record in records:
                        self._apply(record.value)
                if not batch and loop.time() - checked > 2.0:
                    checked = loop.time()
                    current = await probe.current()
                    if current != incarnation:
                        log.warning("broker has a new log; re-reading the state topic from its start")
                        incarnation = current
                        await consumer.seek_to_beginning(*assigned)
        finally:
            self.running = False
            await consumer.stop()
            await probe.close()

    def _apply(self, value: bytes | None) -> None:
        try:
            envelope = orjson.loads(value or b"")
            payload = envelope["payload"]
            if payload.get("event_type") == "ward.state_changed":
                self.live.update(payload)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.undecodable += 1
            log.warning("undecodable state record skipped: %s", exc)
