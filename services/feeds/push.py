"""Push deliveries of the pressure feed to subscribed ICB endpoints.

Each subscription is served by its own task with its own deadline, so a slow or failing receiver
never delays another. A delivery is one message (its body fixed when it is queued) and every
attempt at it is logged on its row; failures are retried with exponential backoff and jitter and
dead-lettered after `max_attempts`. A subscription has at most one undelivered message at a time:
while one is being retried nothing newer is queued, and once it is delivered or dead-lettered the
next change (or interval) queues the state as it is then.

Which subscriptions are due is checked every `poll_seconds` against the scope versions in
PostgreSQL; a lease on the subscription row keeps two feeds replicas from serving the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson

from services.feeds.scope_reader import system_view
from shared.auth import sign_webhook
from shared.organisation import Organisation
from shared.supervise import supervise

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-ICC-Delivery"
SUBSCRIPTION_HEADER = "X-ICC-Subscription"
ATTEMPT_HEADER = "X-ICC-Attempt"


def retry_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped, jittered.

    The jitter keeps half of the exponential step and randomises the rest, so subscribers that
    failed together do not all come back at the same moment, yet each still backs off.
    """
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return float(ceiling / 2 + rand() * ceiling / 2)


@dataclass(frozen=True)
class PushPolicy:
    poll_seconds: float
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    timeout_seconds: float


def is_due(subscription: dict[str, Any], versions: dict[str, int], now: datetime) -> bool:
    """Whether a subscription with no undelivered message should get a new one now."""
    if subscription["cadence"] == "interval":
        last = subscription["last_queued_at"]
        return last is None or now - last >= timedelta(minutes=subscription["interval_minutes"])
    return bool(subscription["last_versions"] != versions and any(versions.values()))


def passes_filters(filters: dict[str, Any], view: dict[str, Any]) -> bool:
    minimum = filters.get("min_effective_level")
    if minimum is None:
        return True
    level = view["opel"]["effective_level"]
    return level is not None and level >= minimum


class PushWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        org: Organisation,
        policy: PushPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.org = org
        self.policy = policy
        self.clock = clock
        self.replica = uuid.uuid4()
        self.inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(policy.timeout_seconds), follow_redirects=False, trust_env=False
        )

    async def run(self, stop: asyncio.Event) -> None:
        async def cycle() -> None:
            while not stop.is_set():
                await self.dispatch()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.policy.poll_seconds)

        try:
            await supervise("feed push", cycle, stop)
        finally:
            for task in self.inflight.values():
                task.cancel()
            await asyncio.gather(*self.inflight.values(), return_exceptions=True)
            await self.client.aclose()

    async def dispatch(self) -> None:
        """Start a task for every live subscription not already being served here."""
        ids = await self.pool.fetch("SELECT id FROM feed_subscription WHERE deleted_at IS NULL")
        for row in ids:
            sub_id = row["id"]
            if sub_id in self.inflight:
                continue
            task = asyncio.create_task(self._serve(sub_id), name=f"feed-push-{sub_id}")
            self.inflight[sub_id] = task
            task.add_done_callback(functools.partial(self._done, sub_id))

    def _done(self, sub_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        self.inflight.pop(sub_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("feed push for %s failed: %s", sub_id, task.exception())

    async def _serve(self, sub_id: uuid.UUID) -> None:
        # the database's clock on both sides, so replicas with skewed clocks agree on a lease
        subscription = await self.pool.fetchrow(
            "UPDATE feed_subscription SET lease_until = clock_timestamp() + make_interval(secs => $2) "
            "WHERE id = $1 AND deleted_at IS NULL "
            "AND (lease_until IS NULL OR lease_until < clock_timestamp()) RETURNING *",
            sub_id,
            self.policy.timeout_seconds + 30,
        )
        if subscription is None:
            return  # another replica has it, or it was deleted
        try:
            delivery = await self._next_delivery(dict(subscription))
            if delivery is not None:
                await self._attempt(dict(subscription), delivery)
        finally:
            await self.pool.execute("UPDATE feed_subscription SET lease_until = NULL WHERE id = $1", sub_id)

    async def _next_delivery(self, subscription: dict[str, Any]) -> dict[str, Any] | None:
        now = self.clock()
        pending = await self.pool.fetchrow(
            "SELECT id, body, attempts, next_attempt_at FROM feed_delivery "
            "WHERE subscription_id = $1 AND status = 'pending' ORDER BY created_at LIMIT 1",
            subscription["id"],
        )
        if pending is not None:
            return dict(pending) if pending["next_attempt_at"] <= now else None
        filters = subscription["filters"] or {}
        view, snapshots, _ = await system_view(self.pool, self.org, filters.get("sites"))
        versions = {s.scope: s.version for s in snapshots}
        if not is_due(subscription, versions, now):
            return None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE feed_subscription SET last_versions = $2, last_queued_at = $3 WHERE id = $1",
                subscription["id"],
                versions,
                now,
            )
            if not passes_filters(filters, view):
                return None
            delivery_id = uuid.uuid4()
            body = orjson.dumps(
                {
                    "type": "system.pressure",
                    "subscription_id": str(subscription["id"]),
                    "delivery_id": str(delivery_id),
                    "queued_at": now.isoformat(),
                    "pressure": view,
                }
            )
            await conn.execute(
                "INSERT INTO feed_delivery (id, subscription_id, status, body, attempts, next_attempt_at, "
                "attempt_log) VALUES ($1, $2, 'pending', $3, 0, $4, '[]'::jsonb)",
                delivery_id,
                subscription["id"],
                body,
                now,
            )
        return {"id": delivery_id, "body": body, "attempts": 0}

    async def _attempt(self, subscription: dict[str, Any], delivery: dict[str, Any]) -> None:
        attempt = delivery["attempts"] + 1
        body: bytes = delivery["body"]
        headers = {
            "content-type": "application/json",
            DELIVERY_HEADER: str(delivery["id"]),
            SUBSCRIPTION_HEADER: str(subscription["id"]),
            ATTEMPT_HEADER: str(attempt),
            **sign_webhook(subscription["secret"], body),
        }
        started = self.clock()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.policy.timeout_seconds):
                response = await self.client.post(subscription["url"], content=body, headers=headers)
            status_code = response.status_code
            if not response.is_success:
                error = f"HTTP {status_code}"
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finished = self.clock()
        entry = {
            "attempt": attempt,
            "at": started.isoformat(),
            "status_code": status_code,
            "error": error,
            "duration_ms": round((finished - started).total_seconds() * 1000, 1),
        }
        if error is None:
            status, next_at, done = "delivered", finished, finished
        elif attempt >= self.policy.max_attempts:
            status, next_at, done = "dead", finished, finished
            log.warning(
                "feed delivery %s dead-lettered after %d attempts: %s", delivery["id"], attempt, error
            )
        else:
            delay = retry_delay(
                attempt, base=self.policy.retry_base_seconds, cap=self.policy.retry_max_seconds
            )
            status, next_at, done = "pending", finished + timedelta(seconds=delay), None
        await self.pool.execute(
            "UPDATE feed_delivery SET status = $2, attempts = $3, next_attempt_at = $4, finished_at = $5, "
            "attempt_log = attempt_log || $6::jsonb WHERE id = $1",
            delivery["id"],
            status,
            attempt,
            next_at,
            done,
            [entry],
        )
