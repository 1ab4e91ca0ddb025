"""Keeps the gateway's live state current: a seed from PostgreSQL, then the state and escalation
topics read whole.

No consumer group: every replica reads every partition (broadcast). A broker that lost its log is
noticed by its incarnation marker and read again from the start; versions make re-reads harmless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.gateway.live_state import CLOSED_ESCALATION_KEPT, LiveState
from shared import topics
from shared.kafka import FETCH_WAIT_MS, IncarnationProbe, stop_client
from shared.supervise import supervise

log = logging.getLogger(__name__)


SEED_ESCALATIONS = (
    "SELECT id, dedup_key, rule, tier, scope, origin_scope, site_id, severity, reason, values, status, "
    "owner, links, promote_at, snoozed_until, flapping, version, created_at, updated_at FROM escalation "
    # each side states its partial index's predicate (migration 0011), so neither reads the whole table
    "WHERE status IN ('open', 'acknowledged') "
    "OR (status NOT IN ('open', 'acknowledged') AND updated_at > $1)"
)
"""The open escalations, and those closed since $1."""


async def seed_from_database(pool: asyncpg.Pool, live: LiveState) -> None:
    for row in await pool.fetch("SELECT summary FROM ward_state"):
        live.seed(row["summary"])
    for row in await pool.fetch("SELECT summary FROM scope_state"):
        live.update_summary(row["summary"], publish=False)
    # the open ones, and those closed recently enough that a resuming screen must still be told
    for row in await pool.fetch(SEED_ESCALATIONS, live.clock() - CLOSED_ESCALATION_KEPT):
        live.update_escalation(escalation_view(row), publish=False)


def escalation_view(row: asyncpg.Record) -> dict[str, Any]:
    """The same shape as the `escalation` of an `escalation.changed` event."""
    view = dict(row)
    view["id"] = str(row["id"])
    for name in ("promote_at", "snoozed_until", "created_at", "updated_at"):
        view[name] = row[name].isoformat() if row[name] is not None else None
    return view


class StateFeed:
    def __init__(
        self, bootstrap: str, live: LiveState, *, partitions: int, fetch_wait_ms: int = FETCH_WAIT_MS
    ) -> None:
        self.bootstrap = bootstrap
        self.live = live
        self.partitions = partitions
        self.fetch_wait_ms = fetch_wait_ms
        self.undecodable = 0
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        await supervise("state feed", lambda: self._follow(stop), stop, first_backoff=0.5)

    async def _follow(self, stop: asyncio.Event) -> None:
        """Read every partition from the start; return when the broker turns out to be a new one."""
        probe = IncarnationProbe(self.bootstrap, self.partitions)
        incarnation = await probe.current()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=self.fetch_wait_ms
        )
        try:
            await consumer.start()
            await consumer.topics()  # fetches fresh metadata
            assigned = [
                TopicPartition(topic.name, p)
                for topic in (topics.STATE, topics.ESCALATIONS)
                for p in sorted(consumer.partitions_for_topic(topic.name) or set())
            ]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            self.running = True
            loop = asyncio.get_running_loop()
            checked = loop.time()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                with self.live.batch():  # what one fetch brought reaches each screen in one write
                    for records in batch.values():
                        for record in records:
                            self._apply(record.value)
                self.live.forget_closed_escalations()
                if not batch and loop.time() - checked > 2.0:
                    checked = loop.time()
                    if await probe.current() != incarnation:
                        # a new log, perhaps with other partitions: start over (versions make re-reads safe)
                        log.warning("broker has a new log; re-reading the state topic from its start")
                        return
        finally:
            self.running = False
            await stop_client(consumer)
            await probe.close()

    def _apply(self, value: bytes | None) -> None:
        try:
            envelope = orjson.loads(value or b"")
            payload = envelope["payload"]
            if payload.get("event_type") == "ward.state_changed":
                self.live.update(payload)
            elif payload.get("event_type") == "scope.state_changed":
                self.live.update_summary(payload)
            elif payload.get("event_type") == "escalation.changed":
                self.live.update_escalation(payload["escalation"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.undecodable += 1
            log.warning("undecodable state record skipped: %s", exc)
