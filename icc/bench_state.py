"""Command-centre state at national scale: rebuild speed and memory (`python -m icc.bench_state`).

1. Rebuild: one million stored events (beds, admissions, ED milestones, handovers across ~140 sites)
   are replayed from PostgreSQL into live state the way a replica rebuilds after a restart or a
   rebalance (`StateProjection._load`: read, decode, apply). Baseline in the same run: the same rows
   read with the same cursor and not decoded. Target: at most 60 s.
2. Memory: the resident growth of one process holding a national organisation (about 140 sites and
   100,000 beds, ~90% occupied, a realistic ED census and a week of ED and handover history) with
   every site's metrics computed. Target: at most 1 GiB.

Sizes follow NHS England figures: about 140 acute sites (trusts' main sites), ~100,000 G&A beds,
~1,000 type-1 ED attendances a day per large site. Runs on its own embedded PostgreSQL, removed after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil

from icc.embedded import start_postgres, stop_postgres
from services.command_centre.metrics import site_metrics
from services.command_centre.projection import StateProjection
from services.command_centre.site_state import SiteState
from shared.db import migrate
from shared.events import (
    AmbulanceArrived,
    AmbulanceHandedOver,
    BedStatus,
    BedStatusChanged,
    EdArrived,
    EdAssessed,
    EdDeparted,
    EdSeen,
    Envelope,
    Location,
    PatientAdmitted,
    PatientDischarged,
    Payload,
)
from shared.opel import load_profile
from shared.organisation import Organisation, Site, System, Ward, WardType

SITES = 140
WARDS_PER_SITE = 24
BEDS_PER_WARD = 30  # 140 × 24 × 30 = 100,800 beds
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def national_org() -> Organisation:
    types = (
        [WardType.general_acute] * 18
        + [WardType.assessment] * 3
        + [WardType.paediatric, WardType.critical_care] * 1
    )
    sites = []
    for s in range(SITES):
        site_id = f"S{s:03d}"
        wards = [
            Ward(
                id=f"{site_id}-W{w:02d}",
                name=f"Ward {w}",
                pas_code=f"W{w:02d}",
                specialty="general medicine",
                type=types[w % len(types)],
                bays=4,
                beds_per_bay=6,
                side_rooms=4,
                escalation_beds=2,
            )
            for w in range(WARDS_PER_SITE)
        ]
        sites.append(
            Site(
                id=site_id,
                name=f"Site {s}",
                pas_facility=site_id,
                ed={"majors_resus_spaces": 30},
                wards=wards,
            )
        )
    return Organisation(system=System(id="NAT", name="National"), sites=sites)


def envelope(payload: Payload, site_id: str, at: datetime) -> Envelope:
    return Envelope.wrap(payload, occurred_at=at, source="bench", site_id=site_id, entity_id="x")


def site_events(site: Site, rng: random.Random, *, ed_days: int, ed_per_day: int) -> Iterator[Envelope]:
    """A site's history: bed statuses, admissions (≈90% occupancy), some discharges, ED and handovers."""
    start = NOW - timedelta(days=ed_days)
    for ward in site.wards:
        for bed in ward.bed_list:
            at = start + timedelta(seconds=rng.randrange(ed_days * 86400))
            if rng.random() < 0.9:
                location = Location(
                    ward_id=ward.id, bed_id=bed.id, pas_code=f"{ward.pas_code}^{bed.room}^{bed.bed}"
                )
                encounter = uuid.uuid4().hex
                yield envelope(PatientAdmitted(encounter_id=encounter, location=location), site.id, at)
            else:
                yield envelope(
                    BedStatusChanged(ward_id=ward.id, bed_id=bed.id, status=BedStatus.unoccupied), site.id, at
                )
    for day in range(ed_days):
        for _ in range(ed_per_day):
            arrived = start + timedelta(days=day, seconds=rng.randrange(86400))
            attendance = uuid.uuid4().hex
            yield envelope(EdArrived(attendance_id=attendance, mode="walk_in"), site.id, arrived)
            yield envelope(
                EdAssessed(attendance_id=attendance, acuity=rng.randint(1, 5)),
                site.id,
                arrived + timedelta(minutes=15),
            )
            yield envelope(
                EdSeen(attendance_id=attendance), site.id, arrived + timedelta(minutes=rng.randrange(20, 240))
            )
            departed = arrived + timedelta(minutes=rng.randrange(60, 900))
            if departed < NOW:
                yield envelope(
                    EdDeparted(attendance_id=attendance, disposition="discharged"), site.id, departed
                )
        for _ in range(ed_per_day // 4):
            arrived = start + timedelta(days=day, seconds=rng.randrange(86400))
            handover = uuid.uuid4().hex
            yield envelope(AmbulanceArrived(handover_id=handover), site.id, arrived)
            yield envelope(
                AmbulanceHandedOver(handover_id=handover, arrived_at=arrived),
                site.id,
                arrived + timedelta(minutes=rng.randrange(5, 120)),
            )
    for _ in range(len(site.wards)):
        yield envelope(PatientDischarged(encounter_id=uuid.uuid4().hex), site.id, NOW - timedelta(hours=1))


def measure_memory(org: Organisation) -> dict[str, float]:
    rng = random.Random(1)
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    states = {}
    events = 0
    for site in org.sites:
        state = SiteState(site, org.system.id)
        for env in site_events(site, rng, ed_days=8, ed_per_day=300):
            state.apply(env)
            events += 1
        states[site.id] = state
    started = time.perf_counter()
    for state in states.values():
        site_metrics(state, NOW)
    metrics_seconds = time.perf_counter() - started
    gc.collect()
    after = process.memory_info().rss
    beds = sum(len(w.bed_list) for s in org.sites for w in s.wards)
    return {
        "sites": len(org.sites),
        "beds": beds,
        "events_held": events,
        "rss_growth_mib": (after - before) / 2**20,
        "metrics_all_sites_seconds": metrics_seconds,
    }


async def load_events(url: str, org: Organisation, total: int) -> int:
    rng = random.Random(2)
    conn = await asyncpg.connect(url)
    written = 0
    try:
        per_site_days = 8
        while written < total:
            for site in org.sites:
                rows = [
                    (env.event_id, env.site_id, env.event_type, env.occurred_at, env.to_json())
                    for env in site_events(site, rng, ed_days=per_site_days, ed_per_day=250)
                ]
                rows = rows[: total - written]
                await conn.copy_records_to_table(
                    "site_event",
                    records=rows,
                    columns=["event_id", "site_id", "event_type", "occurred_at", "body"],
                )
                written += len(rows)
                if written >= total:
                    break
    finally:
        await conn.close()
    return written


async def measure_rebuild(url: str, org: Organisation) -> dict[str, float]:
    profile = load_profile(Path("deploy/opel/default-profile.yaml"))
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            raw = 0
            async for _ in conn.cursor("SELECT id, body FROM site_event ORDER BY site_id, id", prefetch=5000):
                raw += 1
        raw_seconds = time.perf_counter() - started

        projection = StateProjection(org, profile, partitions=6)
        started = time.perf_counter()
        applied = 0
        for site in org.sites:
            live = await projection._load(conn, site.id)
            applied += live.state.applied
            projection.sites.clear()  # one site at a time, like a replica taking over partitions
        rebuild_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {
        "events": applied,
        "rebuild_seconds": rebuild_seconds,
        "raw_read_seconds": raw_seconds,
        "raw_rows": raw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    org = national_org()
    print(f"organisation: {len(org.sites)} sites, {org.bed_count:,} beds")

    memory = measure_memory(org)
    print(
        f"memory: {memory['rss_growth_mib']:.0f} MiB resident growth, "
        f"{memory['events_held']:,} events applied "
        f"of {memory['sites']} sites / {memory['beds']:,} beds (target ≤ 1024 MiB); "
        f"metrics of every site in {memory['metrics_all_sites_seconds']:.2f} s"
    )

    folder = Path(
        tempfile.mkdtemp(
            prefix="bench-state-", dir=Path(".data").resolve() if Path(".data").exists() else None
        )
    )
    folder.chmod(0o755)
    try:
        url = start_postgres(folder)
        migrate(url)
        started = time.perf_counter()
        written = asyncio.run(load_events(url, org, args.events))
        print(f"stored {written:,} events in {time.perf_counter() - started:.1f} s")
        rebuild = asyncio.run(measure_rebuild(url, org))
        ratio = rebuild["raw_read_seconds"] / rebuild["rebuild_seconds"]
        rate = rebuild["events"] / rebuild["rebuild_seconds"]
        print(
            f"rebuild: {rebuild['events']:,} events replayed into state "
            f"in {rebuild['rebuild_seconds']:.1f} s ({rate:,.0f}/s); "
            "baseline raw read of the same rows "
            f"{rebuild['raw_read_seconds']:.1f} s; ratio {ratio:.0%} (target: ≤ 60 s)"
        )
    finally:
        stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
