"""Escalations over REST: list and read what the token covers; raise, acknowledge, annotate, reassign,
snooze and resolve what the token's role and scope allow; export the timeline as CSV.

Any replica answers: each action locks the row, applies the domain transition and writes the
change, its timeline entry and its lifecycle event in one transaction.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field

from services.command_centre import escalation_store as store
from services.command_centre.escalation_policy import RuleSet, Severity
from services.command_centre.escalations import Escalation, Status, TransitionError, may_act
from services.command_centre.schemas import Documented, EscalationDetail, EscalationList
from shared.auth import Principal, Scope, Tier
from shared.problems import Problem
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, require_scope

router = APIRouter(prefix="/v1/escalations", tags=["escalations"])


def _rules(runtime: Runtime) -> RuleSet:
    rules: RuleSet = runtime.extra["rules"]
    return rules


def _site_of(runtime: Runtime, scope: Scope) -> str:
    if scope.tier is Tier.ward:
        return runtime.org.wards[scope.id].site_id
    if scope.tier is Tier.site:
        return scope.id
    # system escalations are keyed (and ordered) by the system's first site
    return runtime.org.sites[0].id


def _may_act(user: Principal, runtime: Runtime, esc: Escalation) -> None:
    scope = Scope.parse(esc.scope)
    if not user.may_see(scope, runtime.org) or not may_act(user.role, scope.tier):
        raise Problem(
            403,
            "forbidden",
            "Cannot act on this escalation",
            f"a {user.role.value} token for {', '.join(str(s) for s in user.scopes)} "
            f"cannot act on a {esc.tier.value} escalation of {esc.scope}",
        )


def _may_see(user: Principal, runtime: Runtime, esc: Escalation) -> bool:
    """Its current scope, or where it started: a ward still sees (not acts on) what it promoted."""
    return any(user.may_see(Scope.parse(s), runtime.org) for s in (esc.scope, esc.origin_scope))


async def _load_visible(runtime: Runtime, user: Principal, escalation_id: uuid.UUID) -> Escalation:
    async with runtime.db.acquire() as conn:
        esc = await store.get(conn, escalation_id)
    if esc is None or not _may_see(user, runtime, esc):
        # one answer for "absent" and "not yours": an id says nothing about places you cannot see
        raise Problem(404, "not-found", "No such escalation", f"escalation {escalation_id} not found")
    return esc


def _view(esc: Escalation, timeline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    view = esc.summary()
    if timeline is not None:
        view["timeline"] = [{**t, "at": t["at"].isoformat()} for t in timeline]
    return view


async def _act(
    runtime: Runtime,
    user: Principal,
    escalation_id: uuid.UUID,
    change: Callable[[Escalation, datetime], None],
) -> dict[str, Any]:
    await _load_visible(runtime, user, escalation_id)
    async with runtime.db.acquire() as conn, conn.transaction():
        esc = await store.get(conn, escalation_id, lock=True)
        if esc is None:
            raise Problem(404, "not-found", "No such escalation", f"escalation {escalation_id} not found")
        _may_act(user, runtime, esc)
        try:
            change(esc, datetime.now(UTC))
        except TransitionError as exc:
            raise Problem(409, "conflict", "Not possible now", str(exc)) from exc
        await store.save(conn, esc, notifiers=runtime.extra.get("notifiers", ()))
        timeline = await store.timeline(conn, esc.id)
    return _view(esc, timeline)


@router.get(
    "",
    summary="Escalations the token covers, filtered by scope and status",
    responses={200: {"model": EscalationList}},
)
async def list_escalations(
    runtime: CurrentRuntime,
    user: CurrentUser,
    scope: Annotated[str | None, Query(description="ward:ID, site:ID or system:ID (and beneath)")] = None,
    status: Annotated[Status | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Documented:
    wanted: Scope | None = None
    if scope is not None:
        try:
            wanted = Scope.parse(scope)
        except ValueError as exc:
            raise Problem(422, "validation", "Bad scope", str(exc)) from exc
        require_scope(user, runtime, wanted)
    statuses = [status.value] if status is not None else [s.value for s in Status]
    async with runtime.db.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {store.COLUMNS} FROM escalation WHERE status = ANY($1::text[]) "
            "AND site_id = ANY($2::text[]) ORDER BY updated_at DESC LIMIT $3",
            statuses,
            _sites_of(user, runtime, wanted),
            limit * 5,
        )
    found = []
    for row in rows:
        esc = store.from_row(row)
        place = Scope.parse(esc.scope)
        if not _may_see(user, runtime, esc):
            continue
        origin = Scope.parse(esc.origin_scope)
        if wanted is not None and not (_within(place, wanted, runtime) or _within(origin, wanted, runtime)):
            continue
        found.append(_view(esc))
        if len(found) >= limit:
            break
    return {"escalations": found}


def _sites_of(user: Principal, runtime: Runtime, wanted: Scope | None) -> list[str]:
    """The sites whose escalations the question can concern (the rest is filtered in Python)."""
    sites: set[str] = set()
    for scope in [wanted] if wanted is not None else list(user.scopes):
        if scope.tier is Tier.system:
            sites.update(s.id for s in runtime.org.sites)
        elif scope.tier is Tier.site:
            sites.add(scope.id)
        elif scope.id in runtime.org.wards:
            sites.add(runtime.org.wards[scope.id].site_id)
    return sorted(sites)


def _within(place: Scope, wanted: Scope, runtime: Runtime) -> bool:
    """Whether an escalation at `place` belongs to the asked-for scope (that place or beneath it)."""
    if place == wanted or wanted.tier is Tier.system:
        return True
    return (
        wanted.tier is Tier.site
        and place.tier is Tier.ward
        and runtime.org.wards[place.id].site_id == wanted.id
    )


class RaiseBody(BaseModel):
    scope: str = Field(description="ward:ID or site:ID (system:ID for admins)")
    reason: str = Field(min_length=1, max_length=500)
    severity: Severity = Severity.medium
    key: str | None = Field(
        default=None, max_length=100, description="dedup: the same key and scope updates the open one"
    )


@router.post(
    "",
    status_code=201,
    summary="Raise an escalation by hand, at the user's tier and scope",
    responses={201: {"model": EscalationDetail}},
)
async def raise_escalation(body: RaiseBody, runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    try:
        scope = Scope.parse(body.scope)
    except ValueError as exc:
        raise Problem(
            422, "validation", "Bad scope", str(exc), errors=[{"field": "scope", "message": str(exc)}]
        ) from exc
    require_scope(user, runtime, scope)
    if not may_act(user.role, scope.tier):
        raise Problem(
            403,
            "forbidden",
            "Cannot raise here",
            f"a {user.role.value} cannot raise a {scope.tier.value} escalation",
        )
    now = datetime.now(UTC)
    dedup = f"manual:{body.key or uuid.uuid4().hex}@{scope}"
    async with runtime.db.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(
            f"SELECT {store.COLUMNS} FROM escalation WHERE dedup_key = $1 "
            "AND status IN ('open', 'acknowledged') FOR UPDATE",
            dedup,
        )
        if existing is not None:
            esc = store.from_row(existing)
            esc.annotate(user.subject, f"raised again: {body.reason}", now)
        else:
            esc = Escalation.raise_new(
                rules=_rules(runtime),
                dedup_key=dedup,
                rule=None,
                tier=scope.tier,
                scope=str(scope),
                site_id=_site_of(runtime, scope),
                severity=body.severity,
                reason=body.reason,
                values={},
                actor=user.subject,
                now=now,
            )
        if not await store.save(conn, esc, notifiers=runtime.extra.get("notifiers", ())):
            raise Problem(
                409, "conflict", "Raised concurrently", "the same escalation was raised at the same time"
            )
        timeline = await store.timeline(conn, esc.id)
    return _view(esc, timeline)


@router.get(
    "/{escalation_id}",
    summary="One escalation with its timeline",
    responses={200: {"model": EscalationDetail}},
)
async def get_escalation(escalation_id: uuid.UUID, runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    esc = await _load_visible(runtime, user, escalation_id)
    return _view(esc, await store.timeline(runtime.db, esc.id))


@router.get("/{escalation_id}/timeline.csv", summary="The timeline as CSV, for an incident review")
async def timeline_csv(escalation_id: uuid.UUID, runtime: CurrentRuntime, user: CurrentUser) -> Response:
    esc = await _load_visible(runtime, user, escalation_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["escalation_id", "at", "actor", "action", "tier", "detail"])
    for entry in await store.timeline(runtime.db, esc.id):
        writer.writerow(
            [
                esc.id,
                entry["at"].isoformat(),
                entry["actor"],
                entry["action"],
                entry["tier"],
                orjson.dumps(entry["detail"], option=orjson.OPT_SORT_KEYS).decode(),
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="escalation-{esc.id}.csv"'},
    )


class NoteBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class AssignBody(BaseModel):
    owner: str = Field(min_length=1, max_length=200)


class SnoozeBody(BaseModel):
    until: AwareDatetime


class ResolveBody(BaseModel):
    note: str | None = Field(default=None, max_length=2000)


@router.post(
    "/{escalation_id}/acknowledge",
    summary="Acknowledge (stops the acknowledgement timer)",
    responses={200: {"model": EscalationDetail}},
)
async def acknowledge(escalation_id: uuid.UUID, runtime: CurrentRuntime, user: CurrentUser) -> Documented:
    rules = _rules(runtime)
    return await _act(runtime, user, escalation_id, lambda e, now: e.acknowledge(rules, user.subject, now))


@router.post("/{escalation_id}/resolve", summary="Resolve", responses={200: {"model": EscalationDetail}})
async def resolve(
    escalation_id: uuid.UUID, runtime: CurrentRuntime, user: CurrentUser, body: ResolveBody | None = None
) -> Documented:
    note = body.note if body else None
    return await _act(runtime, user, escalation_id, lambda e, now: e.resolve(user.subject, now, note))


@router.post(
    "/{escalation_id}/notes",
    summary="Add a note to the timeline",
    responses={200: {"model": EscalationDetail}},
)
async def annotate(
    escalation_id: uuid.UUID, body: NoteBody, runtime: CurrentRuntime, user: CurrentUser
) -> Documented:
    return await _act(runtime, user, escalation_id, lambda e, now: e.annotate(user.subject, body.text, now))


@router.post(
    "/{escalation_id}/assign",
    summary="Reassign the owner",
    responses={200: {"model": EscalationDetail}},
)
async def assign(
    escalation_id: uuid.UUID, body: AssignBody, runtime: CurrentRuntime, user: CurrentUser
) -> Documented:
    return await _act(runtime, user, escalation_id, lambda e, now: e.assign(user.subject, body.owner, now))


@router.post(
    "/{escalation_id}/snooze",
    summary="Snooze reminders and promotion until a time",
    responses={200: {"model": EscalationDetail}},
)
async def snooze(
    escalation_id: uuid.UUID, body: SnoozeBody, runtime: CurrentRuntime, user: CurrentUser
) -> Documented:
    return await _act(runtime, user, escalation_id, lambda e, now: e.snooze(user.subject, body.until, now))
