"""Reads what the feeds publish: the latest scope summaries and, where they are stored, open escalations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from services.feeds.pressure import TIERS, Escalations, ScopeSnapshot, system_pressure
from shared.organisation import Organisation

ESCALATION_COLUMNS = frozenset({"site_id", "tier", "status"})
# the escalation lifecycle's active states (docs/escalation.md); resolved and auto_resolved are closed
OPEN_STATUSES = ["open", "acknowledged"]


async def snapshots(pool: asyncpg.Pool, scopes: Iterable[str]) -> dict[str, ScopeSnapshot]:
    wanted = list(scopes)
    rows = await pool.fetch("SELECT scope, version, summary FROM scope_state WHERE scope = ANY($1)", wanted)
    found = {r["scope"]: ScopeSnapshot(r["scope"], r["version"], r["summary"]) for r in rows}
    return {s: found.get(s, ScopeSnapshot(s, 0, None)) for s in wanted}


async def open_escalations(pool: asyncpg.Pool, site_ids: Sequence[str]) -> dict[str, Escalations]:
    """Open escalations per site and tier, read from an `escalation` table when one exists.

    A database migrated before the escalation tables existed has none: every count is then zero and
    `source_available` says so.
    """
    columns = {
        r["column_name"]
        for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'escalation'"
        )
    }
    if not ESCALATION_COLUMNS <= columns:
        return {site_id: Escalations() for site_id in site_ids}
    rows = await pool.fetch(
        "SELECT site_id, tier, count(*) AS n FROM escalation "
        "WHERE site_id = ANY($1) AND status = ANY($2) GROUP BY site_id, tier",
        list(site_ids),
        OPEN_STATUSES,
    )
    counts: dict[str, dict[str, int]] = {site_id: dict.fromkeys(TIERS, 0) for site_id in site_ids}
    for r in rows:
        counts[r["site_id"]][str(r["tier"])] = int(r["n"])
    return {site_id: Escalations(by_tier, True) for site_id, by_tier in counts.items()}


def escalation_key(escalations: dict[str, Escalations]) -> str:
    return ";".join(
        f"{site}:{tier}={n}"
        for site, e in sorted(escalations.items())
        for tier, n in sorted(e.open_by_tier.items())
    )


async def system_view(
    pool: asyncpg.Pool, org: Organisation, site_ids: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[ScopeSnapshot], str]:
    """The system's pressure with the chosen sites (all by default), its snapshots and escalation key."""
    chosen = list(site_ids) if site_ids is not None else [s.id for s in org.sites]
    system_scope = f"system:{org.system.id}"
    found = await snapshots(pool, [system_scope, *(f"site:{s}" for s in chosen)])
    escalations = await open_escalations(pool, chosen)
    sites = {s: found[f"site:{s}"] for s in chosen}
    view = system_pressure(org, found[system_scope], sites, escalations)
    return view, list(found.values()), escalation_key(escalations)
