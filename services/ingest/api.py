"""Ingest HTTP routes: authenticated webhooks that answer only after the message is committed."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from services.ingest.bed_events import BedEventIn
from services.ingest.intake import problem_answer, run_live
from services.ingest.json_api import process_bed_events
from services.ingest.retention import PURGED_COUNTER
from services.ingest.source_auth import failed_auth_limiter
from shared.auth import Role
from shared.problems import OrjsonResponse, Problem
from shared.runtime import CurrentRuntime, CurrentUser, readiness

log = logging.getLogger(__name__)
router = APIRouter()


@router.post(
    "/v1/bed-events",
    status_code=202,
    summary="Report one bed's new status (HMAC-signed or API-key webhook)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": BedEventIn.model_json_schema()}}}
    },
    responses={
        202: {"description": "committed; will reach the live state"},
        401: {},
        413: {},
        422: {},
        429: {},
    },
)
async def post_bed_event(request: Request) -> Response:
    return await run_live(request, process_bed_events, problem_answer)


@router.get("/v1/quarantine", summary="Rejected messages, newest first, optionally filtered (admin)")
async def list_quarantine(
    runtime: CurrentRuntime,
    user: CurrentUser,
    limit: int = 50,
    before_id: int | None = None,
    source: Annotated[str | None, Query(description="only this source's refusals")] = None,
    endpoint: Annotated[
        str | None, Query(description="only refusals at this endpoint, e.g. /v1/pas/hl7v2")
    ] = None,
    state: Annotated[
        Literal["open", "replayed"] | None, Query(description="open: not yet replayed; replayed: replayed")
    ] = None,
    status_code: Annotated[int | None, Query(description="only refusals answered with this status")] = None,
) -> dict[str, Any]:
    if user.role is not Role.admin:
        raise Problem(
            403, "forbidden", "Admins only", "the quarantine holds raw messages; it needs the admin role"
        )
    # `size` is what was received; a request that failed authentication is kept only in part
    # (`body_truncated`), with the digest of the whole body. `received_at` is when the refusal was
    # first seen; the same refusal again counts on its open row (`repeats`, `last_seen_at`).
    rows = await runtime.db.fetch(
        "SELECT id, source, endpoint, content_type, status_code, problem, received_at, "
        "repeats, last_seen_at, coalesce(body_length, length(body)) AS size, body_truncated, "
        "encode(body_sha256, 'hex') AS body_sha256, "
        "replay_count, last_replay_at, replayed_at, raw_message_id, event_ids "
        "FROM quarantine WHERE ($1::bigint IS NULL OR id < $1) "
        "AND ($3::text IS NULL OR source = $3) AND ($4::text IS NULL OR endpoint = $4) "
        "AND ($5::text IS NULL OR (replayed_at IS NULL) = ($5 = 'open')) "
        "AND ($6::int IS NULL OR status_code = $6) "
        "ORDER BY id DESC LIMIT $2",
        before_id,
        min(max(limit, 1), 500),
        source,
        endpoint,
        state,
        status_code,
    )
    # what the retention purge (services/ingest/retention.py) has deleted so far
    purged = await runtime.db.fetch(
        "SELECT name, value FROM ingest_counter WHERE source = '' AND name LIKE $1",
        PURGED_COUNTER + "%",
    )
    return {
        "items": [dict(r) for r in rows],
        "purged": {r["name"].removeprefix(PURGED_COUNTER): r["value"] for r in purged},
    }


@router.get(
    "/v1/auth-failures",
    summary="Client addresses failing authentication now, and how many requests were refused (admin)",
)
async def list_auth_failures(runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    if user.role is not Role.admin:
        raise Problem(403, "forbidden", "Admins only", "the addresses of failing senders need the admin role")
    limiter = failed_auth_limiter(runtime)
    return {
        "limit": limiter.limit,
        "window_seconds": limiter.window,
        "refused_total": limiter.refused_total,
        "items": limiter.current(),
    }


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(runtime: CurrentRuntime) -> OrjsonResponse:
    return await readiness(runtime)
