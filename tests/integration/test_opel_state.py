"""OPEL in the live state and its history: declarations that cannot be read back, the state tick
outliving an unexpected failure, levels kept as history by sites and by the system stage, and the
last change of level (the trend screens show) kept across a restart and rebuilt as of a past time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from services.command_centre.app import _ticks
from services.command_centre.as_of import site_view_as_of
from services.command_centre.projection import StateProjection, current_declared
from services.command_centre.system_stage import SystemStage
from shared import topics
from shared.consumer import Delivery
from shared.db import create_pool
from shared.events import BedStatus, BedStatusChanged, Envelope
from shared.opel import load_profile
from shared.organisation import Organisation
from shared.runtime import Runtime
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings

pytestmark = pytest.mark.integration

PROFILE = load_profile(Path(__file__).resolve().parents[2] / "deploy" / "opel" / "default-profile.yaml")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url)
    yield pool
    await pool.close()


def owning_every_site(projection: StateProjection) -> StateProjection:
    every = [TopicPartition(topics.BEDS.name, p) for p in range(projection.partitions)]
    projection.assigned(every, {topics.BEDS.name: projection.partitions})
    return projection


def occupied(org: Organisation, site_index: int, beds: int, at: datetime) -> list[Delivery]:
    site = org.sites[site_index]
    deliveries = []
    for i, bed in enumerate([b for w in site.wards for b in w.bed_list][:beds]):
        envelope = Envelope.wrap(
            BedStatusChanged(ward_id=bed.ward_id, bed_id=bed.id, status=BedStatus.occupied),
            occurred_at=at - timedelta(minutes=5),
            source="test",
            site_id=site.id,
            entity_id=bed.id,
        )
        deliveries.append(Delivery(topics.BEDS.name, 0, i, i + 1, envelope, envelope.to_json()))
    return deliveries


async def declare(pool: asyncpg.Pool, scope: str, level: int, reason: str, at: datetime) -> None:
    """As a row stored by an earlier version, which did not check what it stored."""
    await pool.execute(
        "INSERT INTO declared_opel (scope, level, reason, declared_by, declared_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        scope,
        level,
        reason,
        "duty-manager",
        at,
    )


async def points(pool: asyncpg.Pool, scope: str) -> dict[str, list[float | None]]:
    series: dict[str, list[float | None]] = {}
    for row in await pool.fetch("SELECT metric, value FROM metric_point WHERE scope = $1 ORDER BY at", scope):
        series.setdefault(row["metric"], []).append(row["value"])
    return series


async def test_a_declaration_that_cannot_be_read_back_is_passed_over_and_the_site_still_loads(
    pool: asyncpg.Pool, org: Organisation, caplog: pytest.LogCaptureFixture
) -> None:
    site = org.sites[0].id
    await declare(pool, f"site:{site}", 3, "Ambulance queue over two hours", T0 - timedelta(hours=1))
    await declare(pool, f"site:{site}", 4, "   ", T0 - timedelta(minutes=30))  # newer, unreadable

    async with pool.acquire() as conn:
        declared = await current_declared(conn, f"site:{site}", T0)
    assert declared is not None and declared.level == 3
    assert "unreadable and ignored" in caplog.text

    projection = owning_every_site(StateProjection(org, PROFILE, partitions=4, clock=lambda: T0))
    async with pool.acquire() as conn, conn.transaction():
        await projection.apply(conn, occupied(org, 0, 3, T0))  # loads the site: must not raise
    summary = await pool.fetchval("SELECT summary FROM scope_state WHERE scope = $1", f"site:{site}")
    assert summary["opel"]["declared"]["level"] == 3
    assert summary["opel"]["effective_level"] == 3


async def test_the_state_tick_outlives_an_unexpected_failure(
    pool: asyncpg.Pool,
    org: Organisation,
    database_url: str,
    tmp_path: Path,
    secrets_file: Path,
    test_secrets: Secrets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def clock() -> datetime:  # fails once, as a bug or a bad row might
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the first tick fails")
        return datetime.now(UTC)

    settings = make_settings(tmp_path, database_url, "127.0.0.1:9", secrets_file, ICC_STATE_TICK_SECONDS=0.2)
    runtime = Runtime(settings, org, test_secrets, database_url, "127.0.0.1:9", pool=pool)
    projection = owning_every_site(StateProjection(org, PROFILE, partitions=4, clock=clock))
    stop = asyncio.Event()
    ticks = asyncio.create_task(_ticks(projection, runtime, stop, asyncio.Event()))
    try:
        site_scope = f"site:{org.sites[0].id}"
        assert await eventually(
            lambda: pool.fetchval("SELECT version FROM scope_state WHERE scope = $1", site_scope), timeout=10
        )
        assert not ticks.done()
    finally:
        stop.set()
        await asyncio.wait_for(ticks, 10)
    failure = next(r for r in caplog.records if r.message == "state tick failed")
    assert failure.levelno == logging.ERROR and failure.exc_info is not None  # with its traceback


async def test_levels_are_history_and_a_new_system_leader_keeps_the_throttle(
    pool: asyncpg.Pool, org: Organisation, database_url: str
) -> None:
    projection = owning_every_site(StateProjection(org, PROFILE, partitions=4, clock=lambda: T0))
    async with pool.acquire() as conn, conn.transaction():
        await projection.apply(conn, occupied(org, 0, 40, T0) + occupied(org, 1, 10, T0))
    site = f"site:{org.sites[0].id}"
    site_series = await points(pool, site)
    site_opel = (await pool.fetchval("SELECT summary FROM scope_state WHERE scope = $1", site))["opel"]
    assert site_series["opel_computed_level"] == [site_opel["computed"]["level"]]
    assert site_series["opel_level"] == [site_opel["effective_level"]]

    system = f"system:{org.system.id}"
    first = SystemStage(database_url, org, PROFILE, interval=60)
    async with pool.acquire() as conn, conn.transaction():
        await first._restore(conn)
        await first.refresh(conn, T0)
    written = await points(pool, system)
    assert {"opel_computed_level", "opel_level", "beds_occupied"} <= set(written)
    computed = written["opel_computed_level"][0]
    assert written["opel_level"] == [computed]

    # a new leader ten seconds on, nothing changed: the last points stand, none is written again
    second = SystemStage(database_url, org, PROFILE, interval=60)
    async with pool.acquire() as conn, conn.transaction():
        await second._restore(conn)
        await second.refresh(conn, T0 + timedelta(seconds=10))
    assert await points(pool, system) == written

    # a declared system level is the effective one from then on; the computed one is kept apart
    declared_level = 4 if computed != 4 else 1
    await declare(pool, system, declared_level, "System critical incident", T0 + timedelta(minutes=1))
    async with pool.acquire() as conn, conn.transaction():
        await second.refresh(conn, T0 + timedelta(minutes=2))
    after = await points(pool, system)
    assert after["opel_level"] == [computed, declared_level]
    assert after["opel_computed_level"] == [computed]
    summary = await pool.fetchval("SELECT summary FROM scope_state WHERE scope = $1", system)
    assert summary["opel"]["change"] == {"from_level": computed, "at": iso(T0 + timedelta(minutes=2))}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_the_last_change_of_level_is_published_kept_across_a_restart_and_rebuilt_as_of(
    pool: asyncpg.Pool, org: Organisation
) -> None:
    site = org.sites[0]
    scope = f"site:{site.id}"
    now = T0

    async def published() -> dict[str, Any]:
        summary: dict[str, Any] = await pool.fetchval(
            "SELECT summary FROM scope_state WHERE scope = $1", scope
        )
        return summary

    first = owning_every_site(StateProjection(org, PROFILE, partitions=4, clock=lambda: now))
    async with pool.acquire() as conn, conn.transaction():
        await first.apply(conn, occupied(org, 0, 3, now))
    before = (await published())["opel"]
    assert before["change"] is None  # a first summary: no change seen yet
    level = before["effective_level"]

    declared = 4 if level != 4 else 1
    await declare(pool, scope, declared, "Ambulance queue over two hours", T0 + timedelta(minutes=1))
    now = T0 + timedelta(minutes=2)
    await first.tick(pool)
    changed = (await published())["opel"]
    assert changed["effective_level"] == declared
    expected = {"from_level": level, "at": iso(now)}
    assert changed["change"] == expected

    # a restarted replica publishes new figures at the same level: the change it carries is the same
    now = T0 + timedelta(minutes=5)
    second = owning_every_site(StateProjection(org, PROFILE, partitions=4, clock=lambda: now))
    async with pool.acquire() as conn, conn.transaction():
        await second.apply(conn, occupied(org, 0, 6, now)[3:])
    after = await published()
    assert after["version"] > 2
    assert after["opel"]["change"] == expected

    # an incident review of that time sees the same change, from the kept level series
    async with pool.acquire() as conn:
        view = await site_view_as_of(conn, org, PROFILE, site.id, T0 + timedelta(minutes=3), "known")
    assert view["opel"]["effective_level"] == declared
    assert view["opel"]["change"] == expected
    async with pool.acquire() as conn:  # before the change, the level then had no earlier one kept
        view = await site_view_as_of(conn, org, PROFILE, site.id, T0 + timedelta(seconds=30), "known")
    assert view["opel"]["change"] is None
