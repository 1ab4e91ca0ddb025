"""Ingest HTTP routes: authenticated webhooks that answer only after the message is committed."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import ORJSONResponse
from pydantic import ValidationError

from services.ingest.bed_events import BedEventIn, to_event
from services.ingest.group_commit import GroupCommitWriter, Inbound
from shared.auth import SIGNATURE_HEADER, SOURCE_HEADER, TIMESTAMP_HEADER, AuthError, Role, verify_webhook
from shared.problems import Problem, validation_problem
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, readiness

log = logging.getLogger(__name__)
router = APIRouter()


async def _quarantine(
    runtime: Runtime, request: Request, body: bytes, source: str | None, problem: Problem
) -> None:
    await runtime.db.execute(
        "INSERT INTO quarantine (source, endpoint, content_type, body, status_code, problem) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        source,
        request.url.path,
        request.headers.get("content-type", ""),
        body,
        problem.status,
        problem.body(request.url.path),
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too-large", "Request body too large", f"the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise Problem(413, "too-large", "Request body too large", f"the limit is {limit} bytes")
    return bytes(body)


@router.post(
    "/v1/bed-events",
    status_code=202,
    summary="Report one bed's new status (HMAC-signed webhook)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": BedEventIn.model_json_schema()}}}
    },
    responses={202: {"description": "committed; will reach the live state"}, 401: {}, 413: {}, 422: {}},
)
async def post_bed_event(request: Request, runtime: CurrentRuntime) -> ORJSONResponse:
    settings = runtime.settings
    source = request.headers.get(SOURCE_HEADER)
    body = b""
    try:
        body = await _read_body(request, settings.max_body_bytes)
        try:
            source = verify_webhook(
                runtime.secrets.webhook_secrets,
                source=source,
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=request.headers.get(SIGNATURE_HEADER),
                body=body,
                max_skew_seconds=settings.webhook_max_skew_seconds,
            )
        except AuthError as exc:
            raise Problem(401, "bad-signature", "Webhook not authenticated", exc.detail) from exc
        try:
            parsed = BedEventIn.model_validate_json(body)
        except ValidationError as exc:
            raise validation_problem(exc) from exc
        event = to_event(parsed, source=source, org=runtime.org)
    except Problem as problem:
        await _quarantine(runtime, request, body, source, problem)
        raise
    writer: GroupCommitWriter = runtime.extra["writer"]
    inserted = await writer.submit(
        Inbound(source, request.url.path, request.headers.get("content-type", ""), body, [event])
    )
    return ORJSONResponse(
        {"status": "accepted", "event_id": str(event.event_id), "duplicate": event.event_id not in inserted},
        status_code=202,
    )


@router.get("/v1/quarantine", summary="Rejected messages, newest first (admin)")
async def list_quarantine(
    runtime: CurrentRuntime, user: CurrentUser, limit: int = 50, before_id: int | None = None
) -> dict[str, Any]:
    if user.role is not Role.admin:
        raise Problem(
            403, "forbidden", "Admins only", "the quarantine holds raw messages; it needs the admin role"
        )
    rows = await runtime.db.fetch(
        "SELECT id, source, endpoint, content_type, status_code, problem, received_at, length(body) AS size "
        "FROM quarantine WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        before_id,
        min(max(limit, 1), 500),
    )
    return {"items": [dict(r) for r in rows]}


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(runtime: CurrentRuntime) -> ORJSONResponse:
    return await readiness(runtime)
