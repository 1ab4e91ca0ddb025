"""The system stage: folds the latest site summaries into the system's state and OPEL.

One replica does it at a time (a session advisory lock elects it); it reads the site summaries
every replica writes, so it needs no partitions of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.command_centre.metrics import SiteMetrics, fold
from services.command_centre.projection import (
    HistoryThrottle,
    current_declared,
    history_values,
    upsert_scope,
    with_change,
    write_history,
)
from shared import topics
from shared.db import init_connection
from shared.events import Envelope, ScopeStateChanged, utcnow
from shared.opel import OpelProfile, OpelResult, effective_level, score_system
from shared.organisation import Organisation
from shared.outbox import OutboxEvent, append
from shared.supervise import EXPECTED, supervise
from shared.topics import state_key

log = logging.getLogger(__name__)

SYSTEM_LOCK = 7_160_004


class SystemStage:
    def __init__(
        self,
        database_url: str,
        org: Organisation,
        profile: OpelProfile,
        *,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database_url = database_url
        self.org = org
        self.profile = profile
        self.interval = interval
        self.clock = clock
        self.scope = f"system:{org.system.id}"
        self.history = HistoryThrottle()
        self.published: dict[str, Any] | None = None
        self.version = 0
        self.is_leader = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Refresh now rather than at the end of the interval (a system level was declared or withdrawn)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async def contend() -> None:
            await self._lead(stop)
            # not the leader (or leadership lost): try again after a while
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

        await supervise("system stage", contend, stop)

    async def _lead(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.database_url)
        await init_connection(conn)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SYSTEM_LOCK):
                return
            self.is_leader = True
            await self._restore(conn)
            while not stop.is_set():
                self._wake.clear()
                try:
                    async with conn.transaction():
                        await self.refresh(conn, self.clock())
                except EXPECTED:
                    raise  # an outage: give up leadership and contend again on a new connection
                except Exception:
                    # A bug or a bad row must not stop the system's state for good: try again next
                    # period, from what was committed (the failed transaction was rolled back).
                    log.exception("system stage refresh failed; retrying in %.0fs", self.interval)
                    await self._restore(conn)
                await wait_for_any((stop, self._wake), self.interval)
        finally:
            self.is_leader = False
            await conn.close()

    async def _restore(self, conn: asyncpg.Connection) -> None:
        """Take up what the last leader committed: the published version and summary (so an unchanged
        state is not published again) and each series' last history point (so the throttle holds
        across a change of leader instead of writing every series at once)."""
        row = await conn.fetchrow("SELECT version, summary FROM scope_state WHERE scope = $1", self.scope)
        self.version = row["version"] if row is not None else 0
        self.published = (
            {"metrics": row["summary"].get("metrics"), "opel": row["summary"].get("opel")}
            if row is not None
            else None
        )
        self.history = HistoryThrottle()
        for point in await conn.fetch(
            "SELECT DISTINCT ON (metric) metric, value, at FROM metric_point WHERE scope = $1 "
            "ORDER BY metric, at DESC",
            self.scope,
        ):
            self.history.last[point["metric"]] = (point["value"], point["at"])

    async def refresh(self, conn: asyncpg.Connection, now: datetime) -> None:
        sites = await site_summaries(conn)
        if not sites:
            return
        metrics = fold([m for m, _ in sites.values()], now)
        result = score_system(
            self.profile,
            {site_id: opel for site_id, (_, opel) in sites.items()},
            {site_id: m.beds_total for site_id, (m, _) in sites.items()},
        )
        declared = await current_declared(conn, self.scope, now)
        opel = with_change(
            {
                "computed": result.model_dump(mode="json"),
                "declared": declared.model_dump(mode="json") if declared else None,
                "effective_level": effective_level(result, declared, now),
            },
            self.published,
            now,
        )
        metrics_json = metrics.model_dump(mode="json", exclude={"as_of"})
        comparable = {"metrics": metrics_json, "opel": opel}
        if comparable != self.published:
            self.version += 1
            self.published = comparable
            event = ScopeStateChanged(
                scope=self.scope,
                system_id=self.org.system.id,
                version=self.version,
                metrics=metrics_json,
                opel=opel,
                as_of=now,
            )
            await upsert_scope(conn, event)
            envelope = Envelope.wrap(
                event,
                occurred_at=now,
                source="command-centre",
                site_id=self.org.system.id,
                entity_id=self.scope,
            )
            await append(
                conn,
                [
                    OutboxEvent(
                        envelope.event_id,
                        topics.STATE.name,
                        state_key(self.org.system.id, "system"),
                        envelope.to_json(),
                        envelope.event_type,
                    )
                ],
            )
        await write_history(conn, self.scope, self.history.offer(history_values(metrics, opel), now), now)


async def site_summaries(conn: asyncpg.Connection) -> dict[str, tuple[SiteMetrics, OpelResult]]:
    rows = await conn.fetch("SELECT scope, summary FROM scope_state WHERE scope LIKE 'site:%'")
    summaries: dict[str, tuple[SiteMetrics, OpelResult]] = {}
    for row in rows:
        summary = row["summary"]
        metrics = SiteMetrics.model_validate({**summary["metrics"], "as_of": summary["as_of"]})
        summaries[row["scope"].removeprefix("site:")] = (
            metrics,
            OpelResult.model_validate(summary["opel"]["computed"]),
        )
    return summaries


async def wait_for_any(events: Sequence[asyncio.Event], timeout: float | None) -> None:
    """Return when one of `events` is set, or after `timeout` seconds (None: no time limit)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
