"""The feed's reads and the push worker against a real PostgreSQL: escalation counts with and without
an escalation table, and a failing subscriber dead-lettered on its own schedule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from services.feeds.push import PushPolicy, PushWorker
from services.feeds.scope_reader import open_escalations, system_view
from shared.db import create_pool
from shared.organisation import Organisation

pytestmark = pytest.mark.integration


async def test_escalations_are_zero_and_unavailable_without_a_table(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute("DROP TABLE escalation CASCADE")  # a database from before the escalation tables
    pool = await create_pool(database_url)
    try:
        counts = await open_escalations(pool, ["RXN01"])
        assert counts["RXN01"].available is False
        assert dict(counts["RXN01"].open_by_tier) == {"ward": 0, "site": 0, "system": 0}
    finally:
        await pool.close()


async def test_open_escalations_counted_by_tier_when_the_table_exists(
    database_url: str, db: asyncpg.Connection, org: Organisation
) -> None:
    # only the columns the feed reads: the reader must not depend on the rest of the table
    await db.execute("DROP TABLE escalation CASCADE")
    await db.execute("CREATE TABLE escalation (id serial, site_id text, tier text, status text)")
    await db.execute(
        "INSERT INTO escalation (site_id, tier, status) VALUES "
        "('RXN01', 'ward', 'open'), ('RXN01', 'ward', 'acknowledged'), ('RXN01', 'site', 'open'), "
        "('RXN01', 'ward', 'resolved'), ('RXN01', 'site', 'auto_resolved'), ('RXN02', 'system', 'open')"
    )
    pool = await create_pool(database_url)
    try:
        view, found, key = await system_view(pool, org)
        assert view["escalations"] == {
            "open_by_tier": {"ward": 2, "site": 1, "system": 1},
            "source_available": True,
        }
        rxn01 = next(s for s in view["sites"] if s["site_id"] == "RXN01")
        assert rxn01["escalations"]["open_by_tier"] == {"ward": 2, "site": 1, "system": 0}
        assert [s.version for s in found] == [0, 0, 0] and "RXN01:ward=2" in key
    finally:
        await pool.close()


async def test_unreachable_subscriber_is_dead_lettered(
    database_url: str, db: asyncpg.Connection, org: Organisation
) -> None:
    await db.execute(
        "INSERT INTO scope_state (scope, version, summary) VALUES ('system:QXN', 1, $1::jsonb)",
        '{"as_of": "2026-11-26T09:00:00Z", "metrics": {}, "opel": null}',
    )
    sub_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO feed_subscription (id, system_id, url, secret, filters, cadence, created_by) "
        "VALUES ($1, 'QXN', 'http://127.0.0.1:9/closed', $2, '{}'::jsonb, 'on_change', 'test')",
        sub_id,
        uuid.uuid4().hex * 2,
    )
    pool = await create_pool(database_url)
    policy = PushPolicy(
        poll_seconds=0.05, max_attempts=2, retry_base_seconds=0.01, retry_max_seconds=0.01, timeout_seconds=2
    )
    now = [datetime.now(UTC)]
    worker = PushWorker(pool, org, policy, clock=lambda: now[0])
    try:
        for _ in range(3):
            await worker.dispatch()
            for task in list(worker.inflight.values()):
                await task
            now[0] += timedelta(seconds=1)
        row = await db.fetchrow(
            "SELECT status, attempts, attempt_log FROM feed_delivery WHERE subscription_id = $1", sub_id
        )
        assert row["status"] == "dead" and row["attempts"] == 2
        assert all(
            entry["status_code"] is None and entry["error"] for entry in orjson.loads(row["attempt_log"])
        )
    finally:
        await worker.client.aclose()
        await pool.close()
