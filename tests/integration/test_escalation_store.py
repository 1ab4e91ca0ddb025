"""Escalations in PostgreSQL: rules raise and dedup inside a transaction, lifecycle events go to
the outbox with them, and a deadline promotes exactly once however many replicas race for it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from services.command_centre import escalation_store as store
from services.command_centre.escalation_engine import EscalationEngine
from services.command_centre.escalation_policy import RuleSet
from services.command_centre.notifiers import Backoff, DeliveryLoop, WebhookNotifier
from shared import topics
from shared.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook
from shared.db import create_pool
from shared.organisation import Organisation

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
WARD = "RXN01-CCU"
RULES = RuleSet.model_validate(
    {
        "version": "test",
        "ack_timeout_seconds": {"ward": 60, "site": 600, "system": 3600},
        "rules": [
            {
                "id": "ward-full",
                "description": "Ward has no available beds",
                "tier": "ward",
                "all": [{"metric": "available", "op": "<=", "value": 0, "clear": 2}],
            },
            {
                "id": "three-wards",
                "description": "Three wards escalated",
                "tier": "site",
                "all": [{"metric": "ward_escalations_open", "op": ">=", "value": 3}],
            },
        ],
    }
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    yield p
    await p.close()


async def evaluate(
    pool: asyncpg.Pool, engine: EscalationEngine, wards: dict[str, int], now: datetime
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await engine.evaluate_site(
            conn, "RXN01", {w: {"available": n} for w, n in wards.items()}, {"opel_level": 1}, now
        )


async def test_raise_dedup_promote_once_and_aggregate(pool: asyncpg.Pool, org: Organisation) -> None:
    engine = EscalationEngine(RULES, org)
    await evaluate(pool, engine, {WARD: 0}, T0)
    await evaluate(pool, engine, {WARD: 0}, T0 + timedelta(seconds=5))  # same rule and scope: no second
    rows = await pool.fetch("SELECT id, tier, status FROM escalation")
    assert [(r["tier"], r["status"]) for r in rows] == [("ward", "open")]
    escalation_id = rows[0]["id"]

    # two replicas (or a replay after a crash) both see the deadline pass: exactly one promotes
    async with pool.acquire() as a, pool.acquire() as b:
        first = await store.get(a, escalation_id)
        second = await store.get(b, escalation_id)
        assert first is not None and second is not None
        late = T0 + timedelta(seconds=61)
        assert first.promote(RULES, org, late) and second.promote(RULES, org, late)
        async with a.transaction():
            assert await store.save(a, first, due_check=True)
        async with b.transaction():
            assert not await store.save(b, second, due_check=True)
    # and the next tick, with a stale idea of the deadline, does not promote again
    await evaluate(pool, EscalationEngine(RULES, org), {WARD: 0}, T0 + timedelta(seconds=62))
    actions = [t["action"] for t in await store.timeline(pool, escalation_id)]
    assert actions == ["raised", "promoted"]
    row = await pool.fetchrow("SELECT tier, scope FROM escalation WHERE id = $1", escalation_id)
    assert (row["tier"], row["scope"]) == ("site", "site:RXN01")

    # three wards of one site escalated: the site tier is raised directly, citing them
    others = [w.id for w in org.sites_by_id["RXN01"].wards if w.id != WARD][:2]
    await evaluate(pool, engine, {WARD: 0, others[0]: 0, others[1]: 0}, T0 + timedelta(seconds=70))
    site = await pool.fetchrow("SELECT links, status FROM escalation WHERE rule = 'three-wards'")
    assert site is not None and site["status"] == "open" and len(site["links"]) == 3

    # the condition clears past its hysteresis: auto-resolved
    await evaluate(pool, engine, {WARD: 2}, T0 + timedelta(seconds=80))
    row = await pool.fetchrow("SELECT status FROM escalation WHERE id = $1", escalation_id)
    assert row["status"] == "auto_resolved"

    events = await pool.fetch(
        "SELECT topic, key, value FROM outbox WHERE topic = $1", topics.ESCALATIONS.name
    )
    changes = [orjson.loads(e["value"])["payload"]["change"]["action"] for e in events]
    assert changes.count("promoted") == 1
    assert {e["key"] for e in events} == {"RXN01"}


def test_default_rules_file_is_valid(org: Organisation) -> None:
    from services.command_centre.escalation_policy import load_rules

    EscalationEngine(load_rules(Path("deploy/escalation/default-rules.yaml")), org)


async def test_webhook_is_signed_retried_logged_and_dead_lettered(
    pool: asyncpg.Pool, org: Organisation
) -> None:
    secret = secrets.token_urlsafe(32)  # generated per run
    answers = [503, 500, 200]
    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(answers.pop(0) if answers else 200)

    engine = EscalationEngine(RULES, org, notifiers=("webhook",))
    await evaluate(pool, engine, {WARD: 0}, T0)
    now = [datetime.now(UTC) + timedelta(seconds=1)]  # rows are queued at the database's now()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        loop = DeliveryLoop(
            pool,
            WebhookNotifier("https://receiver.invalid/hook", secret, client),
            backoff=Backoff(first_seconds=10, max_attempts=3),
            clock=lambda: now[0],
        )
        assert await loop.deliver_due()
        assert not await loop.deliver_due()  # backing off: not due yet
        now[0] += timedelta(seconds=10)
        assert await loop.deliver_due()
        now[0] += timedelta(seconds=20)
        assert await loop.deliver_due()
    row = await pool.fetchrow("SELECT status, attempts, log FROM escalation_delivery")
    assert (row["status"], row["attempts"]) == ("delivered", 3)
    assert [entry["status"] for entry in row["log"]] == [503, 500, 200]
    last = received[-1]
    assert (
        verify_webhook(
            {"icc": secret},
            source="icc",
            timestamp=last.headers[TIMESTAMP_HEADER],
            signature=last.headers[SIGNATURE_HEADER],
            body=last.content,
            max_skew_seconds=300,
        )
        == "icc"
    )
    assert orjson.loads(last.content)["event_type"] == "escalation.changed"

    # a receiver that never answers well: dead-lettered after the last attempt, and left alone
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client:
        await evaluate(pool, engine, {WARD: 2}, T0 + timedelta(seconds=5))  # auto-resolved: a new change
        loop = DeliveryLoop(
            pool,
            WebhookNotifier("https://receiver.invalid/hook", secret, client),
            backoff=Backoff(first_seconds=1, max_attempts=2),
            clock=lambda: now[0],
        )
        for _ in range(4):
            now[0] += timedelta(hours=1)
            await loop.deliver_due()
    dead = await pool.fetchrow("SELECT status, attempts FROM escalation_delivery WHERE status <> 'delivered'")
    assert (dead["status"], dead["attempts"]) == ("dead", 2)
    assert loop.dead == 1


# the ward rule of RULES, raised only once its condition has held for 15 minutes
HELD_RULES = RULES.model_copy(
    update={"rules": (RULES.rules[0].model_copy(update={"id": "ward-full-15", "for_minutes": 15}),)}
)


async def test_a_restart_or_rebalance_keeps_how_long_a_condition_has_held(
    pool: asyncpg.Pool, org: Organisation
) -> None:
    """A replica that evaluated the first 10 minutes of a 15-minute wait is replaced (a restart, a
    rebalance): the new owner raises 5 minutes later, not 15."""
    await evaluate(pool, EscalationEngine(HELD_RULES, org), {WARD: 0}, T0)
    await evaluate(pool, EscalationEngine(HELD_RULES, org), {WARD: 0}, T0 + timedelta(minutes=10))
    assert await pool.fetchval("SELECT count(*) FROM escalation") == 0
    track = await pool.fetchrow("SELECT site_id, active, holding_since FROM escalation_rule_track")
    assert (track["site_id"], track["active"], track["holding_since"]) == ("RXN01", False, T0)

    engine = EscalationEngine(HELD_RULES, org)
    await evaluate(pool, engine, {WARD: 0}, T0 + timedelta(minutes=15, seconds=1))
    rows = await pool.fetch("SELECT rule, status FROM escalation")
    assert [(r["rule"], r["status"]) for r in rows] == [("ward-full-15", "open")]

    # the same replica losing and regaining the site (a rebalance) reads the stored track again
    engine.forget()
    await evaluate(pool, engine, {WARD: 0}, T0 + timedelta(minutes=16))
    assert await pool.fetchval("SELECT count(*) FROM escalation") == 1  # still active: not raised twice

    # cleared past its hysteresis, nothing left to remember: the row goes
    await evaluate(pool, engine, {WARD: 3}, T0 + timedelta(minutes=17))
    assert await pool.fetchval("SELECT status FROM escalation") == "auto_resolved"
    assert await pool.fetchval("SELECT count(*) FROM escalation_rule_track") == 0


async def test_a_rolled_back_evaluation_leaves_the_stored_track_as_it_was(
    pool: asyncpg.Pool, org: Organisation
) -> None:
    engine = EscalationEngine(HELD_RULES, org)
    await evaluate(pool, engine, {WARD: 0}, T0)
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await engine.evaluate_site(conn, "RXN01", {WARD: {"available": 5}}, {"opel_level": 1}, T0)
        await transaction.rollback()
    engine.forget()  # what the consumer does when a batch fails
    await evaluate(pool, engine, {WARD: 0}, T0 + timedelta(minutes=15, seconds=1))
    assert await pool.fetchval("SELECT count(*) FROM escalation") == 1
