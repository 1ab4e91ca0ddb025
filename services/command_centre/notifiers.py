"""Notifiers: where escalation changes go besides the WebSocket gateway.

One small interface, `Notifier.notify(change)`. The gateway is the built-in one (it reads
icc.escalations.v1 whole and pushes to subscribers). The outbound webhook here never runs inside the
projection: the change is queued in `escalation_delivery` in the same transaction as the change
itself, and a separate delivery loop sends it — signed, retried with exponential backoff and
jitter, every attempt logged, dead-lettered after the last one. Email and Microsoft Teams are
extension points: implement `notify` and register the notifier in the delivery loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg
import httpx

from shared.auth import sign_webhook
from shared.events import utcnow

log = logging.getLogger(__name__)

EVENT_HEADER = "X-ICC-Event"


class DeliveryError(Exception):
    """The receiver did not take the change; `status` is its HTTP status, None when unreachable."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class Notifier(Protocol):
    name: str

    async def notify(self, change: bytes) -> None:
        """Deliver one `escalation.changed` event (its envelope as JSON), or raise DeliveryError."""


class WebhookNotifier:
    """POSTs the event envelope, HMAC-SHA256 signed like ICC's own inbound webhooks."""

    name = "webhook"

    def __init__(self, url: str, secret: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.secret = secret
        self.client = client

    async def notify(self, change: bytes) -> None:
        headers = {
            "content-type": "application/json",
            EVENT_HEADER: "escalation.changed",
            **sign_webhook(self.secret, change),
        }
        try:
            response = await self.client.post(self.url, content=change, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"unreachable: {exc}") from exc
        if not response.is_success:
            raise DeliveryError(f"answered {response.status_code}", response.status_code)


@dataclass(frozen=True)
class Backoff:
    first_seconds: float = 2.0
    max_seconds: float = 600.0
    max_attempts: int = 8

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> timedelta:
        """Exponential with full jitter: somewhere in [base/2, base] for the attempt just failed."""
        base = min(self.max_seconds, self.first_seconds * 2 ** max(0, attempts - 1))
        return timedelta(seconds=base / 2 + rand() * base / 2)


async def enqueue(conn: asyncpg.Connection, notifier: str, event_id: object, body: bytes) -> None:
    """Queue a change for a notifier, inside the transaction that made the change."""
    await conn.execute(
        "INSERT INTO escalation_delivery (event_id, notifier, body) VALUES ($1, $2, $3) "
        "ON CONFLICT (event_id, notifier) DO NOTHING",
        event_id,
        notifier,
        body,
    )


class DeliveryLoop:
    """Sends queued changes; any replica may run one (rows are claimed with SKIP LOCKED)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        notifier: Notifier,
        *,
        backoff: Backoff = Backoff(),
        idle_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pool = pool
        self.notifier = notifier
        self.backoff = backoff
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.delivered = 0
        self.dead = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.deliver_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("escalation delivery: %s", exc)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.idle_seconds)

    async def deliver_due(self, limit: int = 20) -> bool:
        """Attempt every due delivery once; return whether there were any."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, body, attempts FROM escalation_delivery
                WHERE notifier = $1 AND status = 'pending' AND next_attempt_at <= $2
                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
                """,
                self.notifier.name,
                self.clock(),
                limit,
            )
            for row in rows:
                await self._attempt(conn, row)
        return bool(rows)

    async def _attempt(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        attempts = row["attempts"] + 1
        now = self.clock()
        try:
            await self.notifier.notify(row["body"])
        except DeliveryError as exc:
            dead = attempts >= self.backoff.max_attempts
            self.dead += dead
            await conn.execute(
                """
                UPDATE escalation_delivery SET attempts = $2, status = $3, next_attempt_at = $4,
                    last_status = $5::int, last_error = $6::text,
                    log = log || jsonb_build_array(
                        jsonb_build_object('at', $7::text, 'status', $5::int, 'error', $6::text))
                WHERE id = $1
                """,
                row["id"],
                attempts,
                "dead" if dead else "pending",
                now + self.backoff.delay(attempts),
                exc.status,
                str(exc),
                now.isoformat(),
            )
            return
        self.delivered += 1
        await conn.execute(
            """
            UPDATE escalation_delivery SET attempts = $2, status = 'delivered', delivered_at = $3,
                last_status = 200, last_error = NULL,
                log = log || jsonb_build_array(jsonb_build_object('at', $4::text, 'status', 200))
            WHERE id = $1
            """,
            row["id"],
            attempts,
            now,
            now.isoformat(),
        )
