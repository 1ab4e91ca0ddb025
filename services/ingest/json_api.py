"""`POST /v1/ed-events` (ECDS milestones) and `POST /v1/bed-management` (typed bed actions).

Both take one JSON object (`application/json`) or an NDJSON batch (`application/x-ndjson`), and
answer `application/json` (202) or `application/problem+json`; see json_batches for batches.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.ingest import bed_events, bed_management, ed_events, json_batches
from services.ingest.bed_management import BedActionIn
from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.intake import Answer, Commit, IngestContext, Message, problem_answer, run_live

router = APIRouter()


async def process_ed(ctx: IngestContext, message: Message, commit: Commit, *, replay: bool) -> Answer:
    bounds = EventTimeBounds.at_receipt()  # one receipt time for every line of the request
    return await json_batches.process(
        ctx,
        message,
        commit,
        replay=replay,
        mapper=lambda c, source, raw: ed_events.map_message(
            raw, source=source, org=c.org, key=c.pseudonymisation_key, bounds=bounds
        ),
    )


async def process_bed_management(
    ctx: IngestContext, message: Message, commit: Commit, *, replay: bool
) -> Answer:
    bounds = EventTimeBounds.at_receipt()
    return await json_batches.process(
        ctx,
        message,
        commit,
        replay=replay,
        mapper=lambda c, source, raw: bed_management.map_message(
            raw, source=source, org=c.org, key=c.pseudonymisation_key, bounds=bounds
        ),
    )


async def process_bed_events(ctx: IngestContext, message: Message, commit: Commit, *, replay: bool) -> Answer:
    bounds = EventTimeBounds.at_receipt()
    return await json_batches.process(
        ctx,
        message,
        commit,
        replay=replay,
        mapper=lambda c, source, raw: bed_events.map_message(raw, source=source, org=c.org, bounds=bounds),
    )


_BATCH_BODY = {
    "application/json": {"schema": {"type": "object"}},
    "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON object per line"}},
}
_RESPONSES: dict[int | str, dict[str, str]] = {
    202: {"description": "committed; NDJSON: per-line outcomes (accepted / duplicate / rejected)"},
    401: {"description": "not authenticated (HMAC signature or API key)"},
    413: {"description": "body over the size limit"},
    422: {"description": "invalid: problem+json naming the field; NDJSON: no line accepted"},
    429: {"description": "over the source's rate limit, or too many failed authentications; see Retry-After"},
}


@router.post(
    "/v1/ed-events",
    status_code=202,
    summary="ED milestones (ECDS): arrival, initial assessment, seen, DTA, ready, conclusion, departure",
    openapi_extra={
        "requestBody": {
            "content": {
                **_BATCH_BODY,
                "application/json": {"schema": ed_events.ed_event_adapter.json_schema()},
            }
        }
    },
    responses=_RESPONSES,
)
async def post_ed_events(request: Request) -> Response:
    return await run_live(request, process_ed, problem_answer)


@router.post(
    "/v1/bed-management",
    status_code=202,
    summary="Bed management actions: open/close (escalation) beds, housekeeping, isolation, NCR flags",
    openapi_extra={
        "requestBody": {
            "content": {**_BATCH_BODY, "application/json": {"schema": BedActionIn.model_json_schema()}}
        }
    },
    responses=_RESPONSES,
)
async def post_bed_management(request: Request) -> Response:
    return await run_live(request, process_bed_management, problem_answer)
