"""At Europe/London midnight every ward's "today" figures start again, on quiet wards too: the state
tick republishes each ward whose figures changed, so wards still add up to their site."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from services.command_centre.projection import StateProjection
from shared import topics
from shared.consumer import Delivery
from shared.db import create_pool
from shared.events import (
    Envelope,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientTransferred,
    PatientUpdated,
    Payload,
)
from shared.opel import load_profile
from shared.organisation import Organisation

pytestmark = pytest.mark.integration

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "opel" / "default-profile.yaml"
SITE = "RXN01"
AMU, ITU, WD10 = "RXN01-AMU", "RXN01-ITU", "RXN01-WD10"
TODAY_FIGURES = ("admissions_today", "discharges_today", "transfers_in_today", "transfers_out_today")

# British Summer Time: London midnight is 23:00 UTC, so a day taken from UTC would roll over late.
EVENING = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
BEFORE_MIDNIGHT = datetime(2026, 7, 1, 22, 30, tzinfo=UTC)  # 23:30 in London
AFTER_MIDNIGHT = datetime(2026, 7, 1, 23, 5, tzinfo=UTC)  # 00:05 on 2 July in London


def loc(bed_id: str) -> Location:
    return Location(ward_id=bed_id.rsplit("-", 2)[0], bed_id=bed_id)


def delivery(n: int, payload: Payload, at: datetime) -> Delivery:
    envelope = Envelope.wrap(payload, occurred_at=at, source="test", site_id=SITE, entity_id="test")
    return Delivery(topics.BEDS.name, 0, n, n + 1, envelope, envelope.to_json())


def evening_on_the_wards() -> list[Delivery]:
    """Admissions, a discharge and a transfer on 1 July (London), and a discharge expected on 2 July."""
    events: list[tuple[Payload, datetime]] = [
        (PatientAdmitted(encounter_id="e1", location=loc(f"{AMU}-B1-1")), EVENING),
        (PatientAdmitted(encounter_id="e2", location=loc(f"{WD10}-B1-1")), EVENING),
        (PatientUpdated(encounter_id="e2", expected_discharge=date(2026, 7, 2)), EVENING),
        (PatientAdmitted(encounter_id="e3", location=loc(f"{ITU}-B1-1")), EVENING),
        (PatientDischarged(encounter_id="e3"), EVENING + timedelta(hours=2)),
        (PatientAdmitted(encounter_id="e4", location=loc(f"{AMU}-B1-2")), EVENING),
        (PatientTransferred(encounter_id="e4", location=loc(f"{ITU}-B1-2")), EVENING + timedelta(hours=3)),
    ]
    return [delivery(n, payload, at) for n, (payload, at) in enumerate(events)]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url)
    yield p
    await p.close()


async def published(pool: asyncpg.Pool) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[str, Any]]:
    """Each ward's published figures and version, and the site's figures, as stored."""
    rows = await pool.fetch("SELECT ward_id, version, summary FROM ward_state WHERE site_id = $1", SITE)
    site = await pool.fetchval("SELECT summary FROM scope_state WHERE scope = $1", f"site:{SITE}")
    return (
        {r["ward_id"]: r["summary"]["metrics"] for r in rows},
        {r["ward_id"]: r["version"] for r in rows},
        site["metrics"],
    )


def add_up(wards: dict[str, dict[str, Any]], site: dict[str, Any]) -> None:
    for figure in ("admissions_today", "discharges_today"):
        assert sum(w[figure] for w in wards.values()) == site[figure], figure


async def test_quiet_wards_start_a_new_day_at_london_midnight(pool: asyncpg.Pool, org: Organisation) -> None:
    clock = [BEFORE_MIDNIGHT]
    projection = StateProjection(org, load_profile(PROFILE), partitions=3, clock=lambda: clock[0])
    projection.assigned([TopicPartition(topics.BEDS.name, p) for p in range(3)], {topics.BEDS.name: 3})
    assert SITE in projection.owned
    async with pool.acquire() as conn, conn.transaction():
        await projection.apply(conn, evening_on_the_wards())

    await projection.tick(pool)
    wards, versions, site = await published(pool)
    assert (wards[AMU]["admissions_today"], wards[AMU]["transfers_out_today"]) == (2, 1)
    assert (wards[ITU]["admissions_today"], wards[ITU]["discharges_today"]) == (1, 1)
    assert wards[ITU]["transfers_in_today"] == 1
    assert wards[WD10]["expected_discharges_today"] == 0
    add_up(wards, site)

    clock[0] = AFTER_MIDNIGHT  # no event since: only the clock moved
    await projection.tick(pool)
    after, after_versions, site = await published(pool)
    for ward_id, figures in after.items():
        assert [figures[f] for f in TODAY_FIGURES] == [0, 0, 0, 0], ward_id
    assert after[WD10]["expected_discharges_today"] == 1
    assert after[AMU]["patients"] == 1 and after[ITU]["patients"] == 1  # only the day changed
    add_up(after, site)
    rolled = {AMU, ITU, WD10}
    assert {w: after_versions[w] - versions[w] for w in rolled} == dict.fromkeys(rolled, 1)
    assert all(after_versions[w] == versions[w] for w in after_versions.keys() - rolled)

    clock[0] = AFTER_MIDNIGHT + timedelta(minutes=5)
    await projection.tick(pool)
    assert (await published(pool))[1] == after_versions, "a ward republished with nothing changed"
