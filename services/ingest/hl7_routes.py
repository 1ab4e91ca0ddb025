"""HL7 v2 over HTTP, and what the HL7 interface lets a command centre see about itself.

`POST /v1/pas/hl7v2` takes one ER7 message (or a batch) signed like every ICC webhook. An authentic
request is always answered with an HL7 ACK: HTTP 200 with `MSA|AA`, 400 with `AR` (the message
could not be taken: not HL7, wrong type, version or processing id), 422 with `AE` (its content is
wrong, or ICC cannot store it or failed on it: kept in the quarantine, do not send it again), 503
with `AR`, ERR 207 and Retry-After when ICC could not store it just now (send it again).
Authentication failures are 401 problem+json; a body over the limit is 413; too many of either from
one client address, 429 (problem+json, Retry-After).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from services.ingest.event_time_bounds import received_by
from services.ingest.hl7_ack import CONTENT_TYPE
from services.ingest.hl7_intake import RETRY_STATUS, Hl7Intake
from services.ingest.intake import RETRY_AFTER_SECONDS, Rejected, context_of, quarantine_unauthenticated
from services.ingest.source_auth import authenticate, read_body
from shared.auth import (
    SOURCE_HEADER,
    Role,
    Scope,
    Tier,
)
from shared.problems import Problem
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, require_scope

log = logging.getLogger(__name__)
router = APIRouter()

_EXAMPLE_ACK = (
    "MSH|^~\\&|ICC|RXN01|PAS|RXN01|20250203140502+0000||ACK^A01^ACK|ICC7F3A…|P|2.4\rMSA|AA|MSG00001\r"
)


@router.post(
    "/v1/pas/hl7v2",
    summary="HL7 v2 ADT from the PAS: one ER7 message or a batch (HMAC-signed); answered with an HL7 ACK",
    openapi_extra={"requestBody": {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    response_class=Response,
    responses={
        200: {"description": "MSA|AA: committed", "content": {CONTENT_TYPE: {"example": _EXAMPLE_ACK}}},
        400: {"description": "MSA|AR with ERR: the message could not be taken"},
        401: {"description": "not authenticated (problem+json)"},
        413: {"description": "body too large (problem+json)"},
        422: {"description": "MSA|AE with ERR: the content is wrong"},
        429: {
            "description": "over the source's rate limit, or too many failed authentications (problem+json)"
        },
        503: {"description": "MSA|AR with ERR 207: not stored, send it again (see Retry-After)"},
    },
)
async def post_hl7v2(request: Request) -> Response:
    """Same authentication, limits and quarantine as every webhook; the answer is an HL7 ACK."""
    runtime: Runtime = request.app.state.runtime
    endpoint = request.scope["path"]  # what `request.url.path` gives on these routes, without building a URL
    content_type = request.headers.get("content-type", "")
    source = request.headers.get(SOURCE_HEADER)
    body = b""
    try:
        body = await read_body(request, runtime.settings.max_body_bytes)
        source = authenticate(request, runtime, body)
    except Problem as problem:
        await quarantine_unauthenticated(
            runtime.db,
            context_of(runtime).sealer,
            source,
            endpoint,
            Rejected(body, content_type, problem.status, problem.body(endpoint)),
        )
        raise
    intake: Hl7Intake = runtime.extra["hl7"]
    try:
        with received_by(runtime.settings):
            reply = await intake.receive(body, source=source, endpoint=endpoint, content_type=content_type)
    except Exception:  # a fault in ICC: answered with an ACK all the same, and kept
        log.exception("HL7 body from %s failed in ICC", source)
        reply = await intake.failed(body, source=source, endpoint=endpoint, content_type=content_type)
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if reply.http_status == RETRY_STATUS else None
    return Response(reply.ack.encode(), reply.http_status, retry, media_type=CONTENT_TYPE)


class UnmappedLocationOut(BaseModel):
    source: str
    site_id: str | None
    kind: str
    code: str
    count: int
    first_seen: datetime
    last_seen: datetime
    example: str


class UnmappedLocations(BaseModel):
    items: list[UnmappedLocationOut]
    codes: int
    messages: int


@router.get(
    "/v1/locations/unmapped",
    summary="Location codes that the location mapping lacks (admin, or site manager of the site)",
)
async def list_unmapped(
    runtime: CurrentRuntime, user: CurrentUser, site: str | None = None, source: str | None = None
) -> UnmappedLocations:
    if user.role not in (Role.admin, Role.site_manager):
        raise Problem(
            403,
            "forbidden",
            "Admins and site managers only",
            "this list needs the admin or site_manager role",
        )
    if site is not None and user.role is not Role.admin:
        require_scope(user, runtime, Scope(Tier.site, site))
    rows = await runtime.db.fetch(
        """
        SELECT source, site_id, kind, code, count, first_seen, last_seen, example FROM unmapped_location
        WHERE ($1::text IS NULL OR site_id = $1) AND ($2::text IS NULL OR source = $2)
        ORDER BY count DESC, last_seen DESC
        """,
        site,
        source,
    )
    items = [
        UnmappedLocationOut(**{**dict(r), "site_id": r["site_id"] or None})
        for r in rows
        if user.role is Role.admin
        or (r["site_id"] and user.may_see(Scope(Tier.site, r["site_id"]), runtime.org))
    ]
    return UnmappedLocations(items=items, codes=len(items), messages=sum(i.count for i in items))


@router.get("/v1/pas/hl7v2/stats", summary="HL7 interface counters per source (admin)")
async def hl7_stats(runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    if user.role is not Role.admin:
        raise Problem(403, "forbidden", "Admins only", "the interface counters need the admin role")
    rows = await runtime.db.fetch(
        "SELECT source, name, value FROM ingest_counter WHERE name LIKE 'hl7.%' ORDER BY source, name"
    )
    sources: dict[str, dict[str, int]] = {}
    for row in rows:
        sources.setdefault(row["source"], {})[row["name"].removeprefix("hl7.")] = row["value"]
    return {"sources": sources}
