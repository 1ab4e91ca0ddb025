"""Command-centre REST: live state, OPEL with its breakdown, declared levels, history and as-of state.

Live figures come from the summaries the owning replica publishes (so any replica answers the same);
as-of state is rebuilt from the stored events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ValidationError

from services.command_centre.as_of import site_view_as_of
from services.command_centre.metrics import SiteMetrics, ward_metrics
from services.command_centre.projection import OPEL_SERIES, SET_ASIDE_REASONS
from services.command_centre.schemas import (
    AsOfSiteState,
    ConsumerStatus,
    Declaration,
    Documented,
    History,
    LiveSiteState,
    OpelView,
    SystemState,
    WardState,
    Withdrawn,
)
from services.command_centre.site_state import SiteState
from shared.auth import Principal, Role, Scope, Tier
from shared.opel import DeclarationReason, DeclaredLevel, Level
from shared.problems import OrjsonResponse, Problem, validation_problem
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, readiness, require_scope

router = APIRouter()

# Who declares which level: a trust's site duty manager its site's, the ICB's system coordination
# centre the system's (never a trust's in its place).
DECLARERS: dict[Role, frozenset[Tier]] = {
    Role.site_manager: frozenset({Tier.site}),
    Role.system_coordinator: frozenset({Tier.system}),
    Role.admin: frozenset({Tier.site, Tier.system}),
}
HISTORY_METRICS = (
    frozenset(SiteMetrics.model_fields).difference({"as_of", "ed_time_in_department"}).union(OPEL_SERIES)
)
DECLARED_CHANNEL = "icc_opel_declared"
"""Notified (with the scope) when a level is declared or withdrawn, so every replica applies it at once."""


async def _ward_summaries(runtime: Runtime, site_id: str) -> dict[str, dict[str, Any]]:
    rows = await runtime.db.fetch("SELECT ward_id, summary FROM ward_state WHERE site_id = $1", site_id)
    summaries = {r["ward_id"]: r["summary"] for r in rows}
    site = runtime.org.sites_by_id[site_id]
    empty: SiteState | None = None
    now = datetime.now(UTC)
    for ward in site.wards:
        if ward.id not in summaries:  # never reported: its bed base, every bed unoccupied
            empty = empty or SiteState(site, runtime.org.system.id)
            wm = ward_metrics(empty, ward, now)
            summaries[ward.id] = {
                "event_type": "ward.state_changed",
                "system_id": runtime.org.system.id,
                "ward_id": ward.id,
                "version": 0,
                "beds_total": wm.beds_total,
                "available": wm.available,
                "counts": wm.counts,
                "beds": {b.id: "unoccupied" for b in ward.bed_list},
                "as_of": None,
                "metrics": wm.model_dump(exclude={"ward_id", "counts", "beds_total", "available"}),
            }
    return summaries


async def _scope_summary(runtime: Runtime, scope: str) -> dict[str, Any] | None:
    row = await runtime.db.fetchrow("SELECT summary FROM scope_state WHERE scope = $1", scope)
    return dict(row["summary"]) if row is not None else None


def _ward_view(runtime: Runtime, summary: dict[str, Any]) -> dict[str, Any]:
    ward = runtime.org.wards[summary["ward_id"]]
    return {"name": ward.name, "type": ward.type.value, "specialty": ward.specialty, **summary}


@router.get(
    "/v1/wards/{ward_id}/state",
    summary="Live state of one ward: beds, census, today's flows",
    responses={200: {"model": WardState}},
)
async def ward_state(ward_id: str, runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    require_scope(user, runtime, Scope(Tier.ward, ward_id))
    ward = runtime.org.wards[ward_id]
    return _ward_view(runtime, (await _ward_summaries(runtime, ward.site_id))[ward_id])


@router.get(
    "/v1/sites/{site_id}/state",
    summary="Live state of one site (or as of a past time)",
    responses={
        200: {
            "model": LiveSiteState | AsOfSiteState,
            "description": "LiveSiteState, or AsOfSiteState when `as_of` is given",
        }
    },
)
async def site_state(
    site_id: str,
    runtime: CurrentRuntime,
    user: CurrentUser,
    as_of: Annotated[AwareDatetime | None, Query(description="rebuild the state at this time")] = None,
    basis: Annotated[
        Literal["shown", "known"], Query(description="shown: as displayed then; known: as known now")
    ] = "shown",
) -> Documented:
    require_scope(user, runtime, Scope(Tier.site, site_id))
    site = runtime.org.sites_by_id[site_id]
    if as_of is not None:
        async with runtime.db.acquire() as conn:
            view = await site_view_as_of(conn, runtime.org, runtime.extra["profile"], site_id, as_of, basis)
        return {"site_id": site_id, "name": site.name, **view}
    summary = await _scope_summary(runtime, f"site:{site_id}")
    wards = await _ward_summaries(runtime, site_id)
    return {
        "site_id": site_id,
        "name": site.name,
        "scope": f"site:{site_id}",
        "version": summary["version"] if summary else 0,
        "as_of": summary["as_of"] if summary else None,
        "metrics": summary["metrics"] if summary else None,
        "opel": summary["opel"] if summary else None,
        "wards": [_ward_view(runtime, wards[w.id]) for w in site.wards],
    }


@router.get(
    "/v1/systems/{system_id}/state",
    summary="Live state of the system (ICB), folded from its sites",
    responses={200: {"model": SystemState}},
)
async def system_state(system_id: str, runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    require_scope(user, runtime, Scope(Tier.system, system_id))
    summary = await _scope_summary(runtime, f"system:{system_id}")
    sites = []
    for site in runtime.org.sites:
        site_summary = await _scope_summary(runtime, f"site:{site.id}")
        sites.append(
            {
                "site_id": site.id,
                "name": site.name,
                "metrics": site_summary["metrics"] if site_summary else None,
                "opel": site_summary["opel"] if site_summary else None,
            }
        )
    return {
        "system_id": system_id,
        "name": runtime.org.system.name,
        "scope": f"system:{system_id}",
        "version": summary["version"] if summary else 0,
        "as_of": summary["as_of"] if summary else None,
        "metrics": summary["metrics"] if summary else None,
        "opel": summary["opel"] if summary else None,
        "sites": sites,
    }


def _scope_of(kind: Literal["sites", "systems"], scope_id: str) -> Scope:
    return Scope(Tier.site if kind == "sites" else Tier.system, scope_id)


@router.get(
    "/v1/{kind}/{scope_id}/opel",
    summary="OPEL: computed level with its breakdown, declared, effective",
    responses={200: {"model": OpelView}},
)
async def opel(
    kind: Literal["sites", "systems"], scope_id: str, runtime: CurrentRuntime, user: CurrentUser
) -> Documented:
    scope = _scope_of(kind, scope_id)
    require_scope(user, runtime, scope)
    summary = await _scope_summary(runtime, str(scope))
    if summary is None:
        raise Problem(404, "no-state-yet", "No state yet", f"{scope} has not reported any data yet")
    return {"scope": str(scope), "as_of": summary["as_of"], **summary["opel"]}


class DeclareBody(BaseModel):
    level: Level
    reason: DeclarationReason
    expires_at: AwareDatetime | None = None


def _may_declare(user: Principal, scope: Scope) -> None:
    if scope.tier not in DECLARERS.get(user.role, frozenset()):
        who = "a site manager" if scope.tier is Tier.site else "the system coordination centre"
        raise Problem(
            403, "forbidden", "Cannot declare OPEL", f"a {scope.tier.value}'s level is declared by {who}"
        )


@router.post(
    "/v1/{kind}/{scope_id}/opel/declared",
    status_code=201,
    summary="Declare an OPEL level (human override)",
    responses={201: {"model": Declaration}},
)
async def declare(
    kind: Literal["sites", "systems"],
    scope_id: str,
    body: DeclareBody,
    runtime: CurrentRuntime,
    user: CurrentUser,
) -> Documented:
    scope = _scope_of(kind, scope_id)
    require_scope(user, runtime, scope)
    _may_declare(user, scope)
    now = datetime.now(UTC)
    if body.expires_at is not None and body.expires_at <= now:
        raise Problem(
            422,
            "validation",
            "Already expired",
            "expires_at must be in the future",
            errors=[{"field": "expires_at", "message": "must be in the future"}],
        )
    try:  # stored only as the live state will read it back
        declared = DeclaredLevel(
            level=body.level,
            reason=body.reason,
            declared_by=user.subject,
            declared_at=now,
            expires_at=body.expires_at,
        )
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    async with runtime.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO declared_opel (scope, level, reason, declared_by, declared_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) "
            "RETURNING id, scope, level, reason, declared_by, declared_at, expires_at",
            str(scope),
            declared.level,
            declared.reason,
            declared.declared_by,
            declared.declared_at,
            declared.expires_at,
        )
        await conn.execute("SELECT pg_notify($1, $2)", DECLARED_CHANNEL, str(scope))
    return dict(row)


@router.delete(
    "/v1/{kind}/{scope_id}/opel/declared",
    summary="Withdraw the declared OPEL level",
    responses={200: {"model": Withdrawn}},
)
async def withdraw(
    kind: Literal["sites", "systems"], scope_id: str, runtime: CurrentRuntime, user: CurrentUser
) -> Documented:
    scope = _scope_of(kind, scope_id)
    require_scope(user, runtime, scope)
    _may_declare(user, scope)
    async with runtime.db.acquire() as conn, conn.transaction():
        # only what is in force: an expired or withdrawn declaration has nothing left to withdraw
        rows = await conn.fetch(
            "UPDATE declared_opel SET withdrawn_at = $3, withdrawn_by = $2 "
            "WHERE scope = $1 AND withdrawn_at IS NULL AND declared_at <= $3 "
            "AND (expires_at IS NULL OR expires_at > $3) RETURNING id",
            str(scope),
            user.subject,
            datetime.now(UTC),
        )
        if rows:
            await conn.execute("SELECT pg_notify($1, $2)", DECLARED_CHANNEL, str(scope))
    if not rows:
        raise Problem(404, "not-found", "Nothing declared", f"{scope} has no declared level in force")
    return {"withdrawn": [r["id"] for r in rows]}


@router.get(
    "/v1/{kind}/{scope_id}/history",
    summary="A metric's history (written on change, at most once a minute)",
    responses={200: {"model": History}},
)
async def history(
    kind: Literal["sites", "systems"],
    scope_id: str,
    metric: str,
    runtime: CurrentRuntime,
    user: CurrentUser,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
) -> Documented:
    scope = _scope_of(kind, scope_id)
    require_scope(user, runtime, scope)
    if metric not in HISTORY_METRICS:
        raise Problem(
            422,
            "validation",
            "Unknown metric",
            f"{metric!r} is not a metric with history",
            errors=[{"field": "metric", "message": "see docs/metrics.md for the names"}],
        )
    end = to or datetime.now(UTC)
    start = from_ or end - timedelta(days=1)
    if start > end:
        raise Problem(
            422,
            "validation",
            "Bad period",
            "from must not be after to",
            errors=[{"field": "from", "message": "must not be after to"}],
        )
    # A point holds until the next one, so the last point at or before `from` is the value in force
    # then: without it a metric that did not change inside the window would have no points at all.
    rows = await runtime.db.fetch(
        "(SELECT at, value FROM metric_point WHERE scope = $1 AND metric = $2 AND at <= $3 "
        "ORDER BY at DESC LIMIT 1) "
        "UNION ALL "
        "(SELECT at, value FROM metric_point WHERE scope = $1 AND metric = $2 AND at > $3 AND at <= $4) "
        "ORDER BY at",
        str(scope),
        metric,
        start,
        end,
    )
    return {
        "scope": str(scope),
        "metric": metric,
        "from": start,
        "to": end,
        "points": [{"at": r["at"], "value": r["value"]} for r in rows],
    }


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(runtime: CurrentRuntime) -> OrjsonResponse:
    return await readiness(runtime)


@router.get(
    "/v1/consumer", summary="Consumer progress of this replica", responses={200: {"model": ConsumerStatus}}
)
async def consumer_status(runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    consumer = runtime.extra["consumer"]
    projection = runtime.extra["projection"]
    stats = consumer.stats
    return {
        "running": consumer.running,
        "applied": stats.applied,
        # events not applied: for a site outside the organisation model, or one another replica owns
        "set_aside": {reason: stats.set_aside[reason] for reason in SET_ASIDE_REASONS},
        "skipped_duplicates": stats.skipped_duplicates,
        "dead_lettered": stats.dead_lettered,
        "broker_resets": stats.resets,
        "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.positions),
        "owned_sites": sorted(projection.owned),
    }
