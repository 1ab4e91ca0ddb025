"""State as of a past time, rebuilt from the stored event log: what the wall showed then (`shown`)
and what we now know about that moment (`known`, including events that arrived late)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from services.command_centre.as_of import site_view_as_of
from services.command_centre.projection import StateProjection
from shared import topics
from shared.consumer import Delivery
from shared.db import create_pool
from shared.events import BedStatus, BedStatusChanged, Envelope
from shared.opel import load_profile
from shared.organisation import Organisation

pytestmark = pytest.mark.integration

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "opel" / "default-profile.yaml"
NIGHT = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # a Tuesday night, GMT


def bed_change(site_id: str, ward_id: str, bed_id: str, status: BedStatus, at: datetime) -> Envelope:
    return Envelope.wrap(
        BedStatusChanged(ward_id=ward_id, bed_id=bed_id, status=status),
        occurred_at=at,
        source="test",
        site_id=site_id,
        entity_id=bed_id,
    )


async def test_shown_leaves_out_what_arrived_later_and_known_puts_it_back(
    database_url: str, org: Organisation
) -> None:
    site = org.sites[0]
    ward = site.wards[0]
    closed_bed, late_bed = ward.bed_list[0], ward.bed_list[1]
    # (event, when it happened, when the command centre received it)
    story = [
        (bed_change(site.id, ward.id, closed_bed.id, BedStatus.closed, NIGHT), NIGHT),
        (
            bed_change(site.id, ward.id, late_bed.id, BedStatus.occupied, NIGHT + timedelta(minutes=30)),
            NIGHT + timedelta(hours=2),  # the PAS was down: it reached us at 03:00
        ),
        (
            bed_change(site.id, ward.id, closed_bed.id, BedStatus.unoccupied, NIGHT + timedelta(hours=4)),
            NIGHT + timedelta(hours=4),
        ),
    ]
    pool = await create_pool(database_url)
    try:
        projection = StateProjection(org, load_profile(PROFILE), partitions=4)
        # the only replica: every partition, so every site, is its own
        every = [TopicPartition(topics.BEDS.name, p) for p in range(projection.partitions)]
        projection.assigned(every, {topics.BEDS.name: projection.partitions})
        for n, (event, received) in enumerate(story, 1):
            async with pool.acquire() as conn, conn.transaction():
                await projection.apply(conn, [Delivery("icc.beds.v1", 0, n, n, event, event.to_json())])
                await conn.execute(
                    "UPDATE site_event SET recorded_at = $1 WHERE event_id = $2", received, event.event_id
                )

        async def beds(at: datetime, basis: str) -> tuple[str, str, int]:
            async with pool.acquire() as conn:
                view = await site_view_as_of(conn, org, projection.profile, site.id, at, basis)  # type: ignore[arg-type]
            shown = next(w for w in view["wards"] if w["ward_id"] == ward.id)["beds"]
            return shown[closed_bed.id], shown[late_bed.id], view["events_applied"]

        two_am = NIGHT + timedelta(hours=1)
        # at 02:00 the wall showed the closed bed, and the admission had not arrived
        assert await beds(two_am, "shown") == ("closed", "unoccupied", 1)
        # what we know now about 02:00: the patient had been in that bed since 01:30
        assert await beds(two_am, "known") == ("closed", "occupied", 2)
        # before anything happened, both bases agree on an empty picture
        assert await beds(NIGHT - timedelta(minutes=1), "known") == ("unoccupied", "unoccupied", 0)
        # later, both bases have everything, and the reopening
        assert await beds(NIGHT + timedelta(hours=5), "shown") == ("unoccupied", "occupied", 3)
    finally:
        await pool.close()


async def test_a_declared_level_counts_as_of_the_times_it_was_in_force(
    database_url: str, org: Organisation
) -> None:
    site = org.sites[0]
    declared_at = NIGHT
    withdrawn_at = NIGHT + timedelta(hours=3)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO declared_opel (scope, level, reason, declared_by, declared_at, withdrawn_at) "
            "VALUES ($1, 4, 'major incident declared', 'site-manager@example.nhs.uk', $2, $3)",
            f"site:{site.id}",
            declared_at,
            withdrawn_at,
        )
        profile = load_profile(PROFILE)

        async def opel(at: datetime) -> dict[str, Any]:
            view = await site_view_as_of(conn, org, profile, site.id, at, "known")
            return view["opel"]  # type: ignore[no-any-return]

        before = await opel(declared_at - timedelta(minutes=1))
        assert before["declared"] is None
        assert before["effective_level"] == before["computed"]["level"]  # no events: no level
        during = await opel(declared_at + timedelta(hours=1))
        assert during["effective_level"] == 4
        assert during["declared"]["declared_by"] == "site-manager@example.nhs.uk"
        assert during["computed"] == before["computed"]  # kept beside it, not replaced
        after = await opel(withdrawn_at + timedelta(minutes=1))
        assert after["declared"] is None and after["effective_level"] == before["effective_level"]
    finally:
        await conn.close()
