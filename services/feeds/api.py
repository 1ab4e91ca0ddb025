"""Feeds REST: pressure (JSON, FHIR MeasureReport, EDXL-HAVE), CSV export, push subscriptions."""

from __future__ import annotations

import secrets as token_source
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request, Response
from fhir.resources.R4B.bundle import Bundle
from pydantic import AnyHttpUrl, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.feeds import edxl_have
from services.feeds.csv_export import Declaration, to_csv
from services.feeds.fhir_measure_report import measure_report
from services.feeds.pressure import ScopeSnapshot, etag, site_pressure
from services.feeds.scope_reader import escalation_key, open_escalations, snapshots, system_view
from shared.auth import Principal, Role, Scope, Tier
from shared.db import ping
from shared.opel import score_site
from shared.problems import OrjsonResponse, Problem
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, require_scope

router = APIRouter()

Format = Literal["json", "fhir", "edxl"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "fhir": "application/fhir+json",
    "edxl": edxl_have.CONTENT_TYPE,
}
CACHE_CONTROL = "private, max-age=5, must-revalidate"
SUBSCRIBERS = frozenset({Role.admin, Role.icb_analyst})
MAX_EXPORT = timedelta(days=31)


def _format(request: Request, requested: Format | None) -> Format:
    if requested is not None:
        return requested
    accept = request.headers.get("accept", "")
    if "application/fhir+json" in accept:
        return "fhir"
    if "xml" in accept:
        return "edxl"
    return "json"


def _not_modified(request: Request, tag: str) -> bool:
    presented = request.headers.get("if-none-match", "")
    weak = tag.removeprefix("W/")
    return presented.strip() == "*" or any(
        candidate.strip().removeprefix("W/") == weak for candidate in presented.split(",")
    )


def _respond(request: Request, tag: str, fmt: Format, render: Any) -> Response:
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept, Authorization"}
    if _not_modified(request, tag):
        return Response(status_code=304, headers=headers)
    content = render()
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


def _as_of(snapshot: ScopeSnapshot) -> str:
    summary = snapshot.summary or {}
    return str(summary.get("as_of") or datetime.now(UTC).isoformat())


def _metrics(snapshot: ScopeSnapshot) -> dict[str, Any]:
    return dict((snapshot.summary or {}).get("metrics") or {})


def _level(snapshot: ScopeSnapshot) -> int | None:
    opel = (snapshot.summary or {}).get("opel") or {}
    level = opel.get("effective_level")
    return int(level) if level is not None else None


def _hospital(runtime: Runtime, snapshot: ScopeSnapshot) -> edxl_have.HospitalFigures:
    site_id = snapshot.scope.partition(":")[2]
    return edxl_have.HospitalFigures(
        site_id=site_id,
        name=runtime.org.sites_by_id[site_id].name,
        metrics=_metrics(snapshot),
        effective_level=_level(snapshot),
        as_of=_as_of(snapshot),
    )


def _report(runtime: Runtime, snapshot: ScopeSnapshot, name: str) -> dict[str, Any]:
    return measure_report(
        scope=snapshot.scope,
        name=name,
        system_id=runtime.org.system.id,
        metrics=_metrics(snapshot),
        as_of=_as_of(snapshot),
    )


@router.get(
    "/v1/systems/{system_id}/pressure",
    summary="System pressure with its sites: JSON, FHIR MeasureReports (a Bundle) or EDXL-HAVE",
    responses={304: {"description": "unchanged since the ETag presented"}},
)
async def system_pressure_feed(
    system_id: str,
    request: Request,
    runtime: CurrentRuntime,
    user: CurrentUser,
    format: Annotated[Format | None, Query(description="default: by Accept, else json")] = None,
) -> Response:
    require_scope(user, runtime, Scope(Tier.system, system_id))
    fmt = _format(request, format)
    view, found, escalations = await system_view(runtime.db, runtime.org)
    tag = etag(fmt, found, escalations)
    by_scope = {s.scope: s for s in found}
    sites = [by_scope[f"site:{s.id}"] for s in runtime.org.sites]

    def render() -> Any:
        if fmt == "json":
            return view
        if fmt == "edxl":
            return edxl_have.hospital_status(_hospital(runtime, s) for s in sites)
        system = by_scope[f"system:{system_id}"]
        reports = [_report(runtime, system, runtime.org.system.name)] + [
            _report(runtime, s, runtime.org.sites_by_id[s.scope.partition(":")[2]].name) for s in sites
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": _as_of(system),
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in reports],
        }
        return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)

    return _respond(request, tag, fmt, render)


@router.get(
    "/v1/sites/{site_id}/pressure",
    summary="One site's pressure: JSON, a FHIR MeasureReport or EDXL-HAVE",
    responses={304: {"description": "unchanged since the ETag presented"}},
)
async def site_pressure_feed(
    site_id: str,
    request: Request,
    runtime: CurrentRuntime,
    user: CurrentUser,
    format: Annotated[Format | None, Query(description="default: by Accept, else json")] = None,
) -> Response:
    require_scope(user, runtime, Scope(Tier.site, site_id))
    fmt = _format(request, format)
    scope = f"site:{site_id}"
    snapshot = (await snapshots(runtime.db, [scope]))[scope]
    escalations = await open_escalations(runtime.db, [site_id])
    tag = etag(fmt, [snapshot], escalation_key(escalations))

    def render() -> Any:
        if fmt == "json":
            return site_pressure(runtime.org, snapshot, escalations[site_id])
        if fmt == "edxl":
            return edxl_have.hospital_status([_hospital(runtime, snapshot)])
        return _report(runtime, snapshot, runtime.org.sites_by_id[site_id].name)

    return _respond(request, tag, fmt, render)


# ---- export ---------------------------------------------------------------------------------------


async def _export(
    runtime: Runtime, scopes: list[str], start: datetime | None, end: datetime | None
) -> Response:
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=1)
    if not start < end or end - start > MAX_EXPORT:
        raise Problem(
            422,
            "validation",
            "Bad period",
            f"from must be before to, and the period at most {MAX_EXPORT.days} days",
            errors=[{"field": "from", "message": "check the period"}],
        )
    points = await runtime.db.fetch(
        "SELECT scope, metric, at, value FROM metric_point "
        "WHERE scope = ANY($1) AND at >= $2 AND at <= $3 ORDER BY scope, at",
        scopes,
        start,
        end,
    )
    declared = await runtime.db.fetch(
        "SELECT scope, level, declared_at, least(expires_at, withdrawn_at) AS ends_at FROM declared_opel "
        "WHERE scope = ANY($1) AND declared_at <= $2",
        scopes,
        end,
    )
    profile = runtime.extra["profile"]
    metrics = sorted({r["metric"] for r in points})
    text = to_csv(
        [(r["scope"], r["metric"], r["at"], r["value"]) for r in points],
        metrics,
        score=lambda values: score_site(profile, values).level,
        declarations=[Declaration(r["scope"], r["level"], r["declared_at"], r["ends_at"]) for r in declared],
    )
    stamp = f"{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="icc-{scopes[0].replace(":", "-")}-{stamp}.csv"'
        },
    )


@router.get(
    "/v1/systems/{system_id}/export.csv", summary="Metrics and OPEL of the system and its sites over a period"
)
async def export_system(
    system_id: str,
    runtime: CurrentRuntime,
    user: CurrentUser,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
) -> Response:
    require_scope(user, runtime, Scope(Tier.system, system_id))
    scopes = [f"system:{system_id}", *(f"site:{s.id}" for s in runtime.org.sites)]
    return await _export(runtime, scopes, from_, to)


@router.get("/v1/sites/{site_id}/export.csv", summary="Metrics and OPEL of one site over a period")
async def export_site(
    site_id: str,
    runtime: CurrentRuntime,
    user: CurrentUser,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
) -> Response:
    require_scope(user, runtime, Scope(Tier.site, site_id))
    return await _export(runtime, [f"site:{site_id}"], from_, to)


# ---- push subscriptions ---------------------------------------------------------------------------


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[str] | None = Field(default=None, description="only these sites in the payload")
    min_effective_level: int | None = Field(
        default=None, ge=1, le=4, description="deliver only when the system's effective OPEL is at least this"
    )


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_id: str
    url: AnyHttpUrl
    secret: str | None = Field(
        default=None, min_length=32, max_length=256, description="HMAC key; generated when absent"
    )
    filters: Filters = Filters()
    cadence: Literal["on_change", "interval"] = "on_change"
    interval_minutes: int | None = Field(default=None, ge=1, le=1440)

    @model_validator(mode="after")
    def _interval_needs_minutes(self) -> SubscriptionCreate:
        if (self.cadence == "interval") != (self.interval_minutes is not None):
            raise ValueError("interval_minutes is required with cadence 'interval' and only then")
        return self


def _may_subscribe(user: Principal, runtime: Runtime, system_id: str) -> None:
    require_scope(user, runtime, Scope(Tier.system, system_id))
    if user.role not in SUBSCRIBERS:
        raise Problem(
            403, "forbidden", "Cannot manage feeds", "subscriptions need an ICB analyst or an admin"
        )


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "system_id": row["system_id"],
        "url": row["url"],
        "filters": row["filters"],
        "cadence": row["cadence"],
        "interval_minutes": row["interval_minutes"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


@router.post("/v1/feeds/subscriptions", status_code=201, summary="Subscribe an endpoint to signed pushes")
async def create_subscription(
    body: SubscriptionCreate, runtime: CurrentRuntime, user: CurrentUser
) -> OrjsonResponse:
    _may_subscribe(user, runtime, body.system_id)
    unknown = sorted(set(body.filters.sites or ()) - set(runtime.org.sites_by_id))
    if unknown:
        raise Problem(
            422,
            "validation",
            "Unknown site",
            f"{', '.join(unknown)} not in the organisation model",
            errors=[{"field": "filters.sites", "message": "unknown site"}],
        )
    secret = body.secret or token_source.token_urlsafe(32)
    row = await runtime.db.fetchrow(
        "INSERT INTO feed_subscription (id, system_id, url, secret, filters, cadence, interval_minutes, "
        "created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        uuid.uuid4(),
        body.system_id,
        str(body.url),
        secret,
        body.filters.model_dump(exclude_none=True),
        body.cadence,
        body.interval_minutes,
        user.subject,
    )
    # the secret is shown once, to whoever created the subscription
    return OrjsonResponse({**_public(row), "secret": secret}, status_code=201)


@router.get("/v1/feeds/subscriptions", summary="Subscriptions of the systems your token covers")
async def list_subscriptions(runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    _may_subscribe(user, runtime, runtime.org.system.id)
    rows = await runtime.db.fetch(
        "SELECT * FROM feed_subscription WHERE system_id = $1 AND deleted_at IS NULL ORDER BY created_at",
        runtime.org.system.id,
    )
    return {"items": [_public(r) for r in rows]}


async def _subscription(runtime: Runtime, user: Principal, subscription_id: uuid.UUID) -> Any:
    row = await runtime.db.fetchrow(
        "SELECT * FROM feed_subscription WHERE id = $1 AND deleted_at IS NULL", subscription_id
    )
    if row is None:
        raise Problem(404, "not-found", "No such subscription", f"{subscription_id} does not exist")
    _may_subscribe(user, runtime, row["system_id"])
    return row


@router.get("/v1/feeds/subscriptions/{subscription_id}/deliveries", summary="The delivery log, newest first")
async def deliveries(
    subscription_id: uuid.UUID,
    runtime: CurrentRuntime,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    await _subscription(runtime, user, subscription_id)
    rows = await runtime.db.fetch(
        "SELECT id, status, attempts, next_attempt_at, created_at, finished_at, attempt_log "
        "FROM feed_delivery WHERE subscription_id = $1 ORDER BY created_at DESC LIMIT $2",
        subscription_id,
        limit,
    )
    return {"items": [{**dict(r), "id": str(r["id"])} for r in rows]}


@router.delete("/v1/feeds/subscriptions/{subscription_id}", summary="Stop pushing to this subscription")
async def delete_subscription(
    subscription_id: uuid.UUID, runtime: CurrentRuntime, user: CurrentUser
) -> dict[str, Any]:
    await _subscription(runtime, user, subscription_id)
    await runtime.db.execute("UPDATE feed_subscription SET deleted_at = now() WHERE id = $1", subscription_id)
    return {"deleted": str(subscription_id)}


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(runtime: CurrentRuntime) -> OrjsonResponse:
    # the feeds read PostgreSQL only; the broker is not theirs to wait for
    try:
        ready = runtime.pool is not None and await ping(runtime.pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        ready = False
    return OrjsonResponse(
        {"status": "ready" if ready else "not ready", "checks": {"database": ready}},
        status_code=200 if ready else 503,
    )
