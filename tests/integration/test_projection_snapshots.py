"""A site's live state comes back from its snapshot plus the tail of its event log; a snapshot that
cannot be read (damaged, another format, other registers) is passed over and the whole log replayed."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import TopicPartition

from services.command_centre.projection import SNAPSHOT_FORMAT, StateProjection
from shared import topics
from shared.consumer import Delivery
from shared.db import create_pool
from shared.events import BedStatus, BedStatusChanged, Envelope
from shared.opel import load_profile
from shared.organisation import Organisation

pytestmark = pytest.mark.integration

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "opel" / "default-profile.yaml"


def bed_events(org: Organisation, count: int) -> list[Delivery]:
    site = org.sites[0]
    beds = [b for w in site.wards for b in w.bed_list]
    rng = random.Random(11)
    start = datetime.now(UTC) - timedelta(hours=2)
    deliveries = []
    for i in range(count):
        bed = rng.choice(beds)
        envelope = Envelope.wrap(
            BedStatusChanged(ward_id=bed.ward_id, bed_id=bed.id, status=rng.choice(list(BedStatus))),
            occurred_at=start + timedelta(seconds=i),
            source="test",
            site_id=site.id,
            entity_id=bed.id,
        )
        deliveries.append(Delivery("icc.beds.v1", 0, i, i + 1, envelope, envelope.to_json()))
    return deliveries


def owning_every_site(projection: StateProjection) -> StateProjection:
    """The projection as the only replica sees it: every partition is its own."""
    every = [TopicPartition(topics.BEDS.name, p) for p in range(projection.partitions)]
    projection.assigned(every, {topics.BEDS.name: projection.partitions})
    return projection


async def apply_all(pool: asyncpg.Pool, projection: StateProjection, deliveries: list[Delivery]) -> None:
    for i in range(0, len(deliveries), 7):
        async with pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, deliveries[i : i + 7])


async def reloaded_beds(pool: asyncpg.Pool, org: Organisation) -> dict[str, BedStatus]:
    fresh = StateProjection(org, load_profile(PROFILE), partitions=4)
    site = org.sites[0]
    async with pool.acquire() as conn:
        live = await fresh._live(conn, site.id)
    return {b.id: live.state.bed_status(b.id) for w in site.wards for b in w.bed_list}


@pytest.mark.parametrize(
    "damage",
    [
        None,
        ("state", b"\x80\x05not a pickle"),
        ("state", pickle.dumps(["a list, not registers"])),
        ("state", pickle.dumps({"beds": {}})),
        ("format", SNAPSHOT_FORMAT + 1),
    ],
    ids=["intact", "damaged", "not-a-dict", "other-registers", "other-format"],
)
async def test_state_comes_back_from_a_snapshot_or_from_the_whole_log(
    database_url: str, org: Organisation, damage: tuple[str, object] | None
) -> None:
    pool = await create_pool(database_url)
    try:
        projection = owning_every_site(
            StateProjection(org, load_profile(PROFILE), partitions=4, snapshot_every=20)
        )
        deliveries = bed_events(org, 90)
        await apply_all(pool, projection, deliveries)
        site = org.sites[0]
        expected = {
            b.id: projection.sites[site.id].state.bed_status(b.id) for w in site.wards for b in w.bed_list
        }
        assert any(s is not BedStatus.unoccupied for s in expected.values())
        taken = await pool.fetchval("SELECT last_event_id FROM site_snapshot WHERE site_id = $1", site.id)
        assert taken is not None and 0 < taken < await pool.fetchval("SELECT max(id) FROM site_event")
        if damage is not None:
            column, value = damage
            await pool.execute(f"UPDATE site_snapshot SET {column} = $2 WHERE site_id = $1", site.id, value)

        assert await reloaded_beds(pool, org) == expected
    finally:
        await pool.close()
