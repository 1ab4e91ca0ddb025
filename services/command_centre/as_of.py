"""State as of a past moment, rebuilt from the stored events, for incident reviews.

Two bases: `shown` — what the command centre knew then (events that had happened *and* arrived by
that time: what the wall displayed); `known` — what we know now about that moment (events that
had happened by then, including ones that arrived late).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import asyncpg

from services.command_centre.metrics import all_ward_metrics, site_metrics
from services.command_centre.projection import JSON_TIME, OPEL_SERIES
from services.command_centre.site_state import SiteState
from shared.events import Envelope
from shared.opel import DeclaredLevel, OpelProfile, effective_level, score_site
from shared.organisation import Organisation

Basis = Literal["shown", "known"]


async def rebuild_site(
    conn: asyncpg.Connection, org: Organisation, site_id: str, at: datetime, basis: Basis
) -> SiteState:
    state = SiteState(org.sites_by_id[site_id], org.system.id)
    query = "SELECT body FROM site_event WHERE site_id = $1 AND occurred_at <= $2"
    if basis == "shown":
        query += " AND recorded_at <= $2"
    async with conn.transaction():
        async for row in conn.cursor(query + " ORDER BY id", site_id, at, prefetch=5000):
            state.apply(Envelope.from_json(row["body"]))
    return state


async def site_view_as_of(
    conn: asyncpg.Connection,
    org: Organisation,
    profile: OpelProfile,
    site_id: str,
    at: datetime,
    basis: Basis,
) -> dict[str, Any]:
    state = await rebuild_site(conn, org, site_id, at, basis)
    wards = all_ward_metrics(state, at)
    metrics = site_metrics(state, at, wards.values())
    computed = score_site(profile, metrics.opel_inputs())
    declared_row = await conn.fetchrow(
        """
        SELECT level, reason, declared_by, declared_at, expires_at FROM declared_opel
        WHERE scope = $1 AND declared_at <= $2 AND (withdrawn_at IS NULL OR withdrawn_at > $2)
          AND (expires_at IS NULL OR expires_at > $2)
        ORDER BY declared_at DESC, id DESC LIMIT 1
        """,
        f"site:{site_id}",
        at,
    )
    declared = DeclaredLevel.model_validate(dict(declared_row)) if declared_row else None
    level = effective_level(computed, declared, at)
    return {
        "scope": f"site:{site_id}",
        "as_of": at.isoformat(),
        "basis": basis,
        "events_applied": state.applied,
        "metrics": metrics.model_dump(mode="json", exclude={"as_of"}),
        "opel": {
            "computed": computed.model_dump(mode="json"),
            "declared": declared.model_dump(mode="json") if declared else None,
            "effective_level": level,
            "change": await _last_change(conn, f"site:{site_id}", at, level),
        },
        "wards": [
            {
                **wm.model_dump(mode="json"),
                "beds": {b.id: state.bed_status(b.id).value for b in org.wards[wm.ward_id].bed_list},
            }
            for wm in wards.values()
        ],
    }


async def _last_change(
    conn: asyncpg.Connection, scope: str, at: datetime, level: int | None
) -> dict[str, Any] | None:
    """The effective level's last change up to `at`, as its history series (`opel_level`) kept it.

    None when the series does not end at `level` (the rebuilt level differs from the one shown then,
    e.g. with late events counted) or holds no earlier level. The series is written on change, at
    most once a minute, so the time is the point's, up to a minute after the level changed."""
    rows = await conn.fetch(
        "SELECT value, at FROM metric_point WHERE scope = $1 AND metric = $2 AND at <= $3 "
        "ORDER BY at DESC LIMIT 50",
        scope,
        OPEL_SERIES[1],
        at,
    )
    current = float(level) if level is not None else None
    if not rows or rows[0]["value"] != current:
        return None
    since = rows[0]["at"]
    for row in rows[1:]:
        if row["value"] != current:
            before = row["value"]
            return {
                "from_level": int(before) if before is not None else None,
                "at": JSON_TIME.dump_python(since, mode="json"),
            }
        since = row["at"]
    return None
