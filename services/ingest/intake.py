"""What every ingest interface shares: a message in, an answer out, rejected parts to quarantine.

An interface is a `Processor`: it validates and maps a message and hands the events to a commit
function. The live route commits through the group-commit writer and quarantines what was rejected;
a quarantine replay runs the very same processor with a commit that also marks the quarantine row.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from fastapi import Request
from fastapi.responses import Response

from services.ingest.group_commit import GroupCommitWriter, Inbound
from services.ingest.location_source import LocationMapSource
from services.ingest.source_auth import authenticate, read_body
from shared.auth import SOURCE_HEADER
from shared.db import next_ids
from shared.organisation import Organisation
from shared.problems import PROBLEM_JSON, Problem
from shared.runtime import Runtime

Commit = Callable[[Inbound], Awaitable[set[uuid.UUID]]]


@dataclass(frozen=True)
class Message:
    source: str
    endpoint: str
    content_type: str
    body: bytes


@dataclass
class Rejected:
    """A rejected message, or one line / entry of a batch, kept raw with the reason answered."""

    body: bytes
    content_type: str
    status: int
    problem: dict[str, Any]
    # the per-part outcome in the answer, which learns the quarantine id once the row exists
    outcome: dict[str, Any] | None = None


@dataclass
class Answer:
    status: int
    content: Any
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    committed: bool = False
    raw_id: int | None = None
    event_ids: list[uuid.UUID] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.content),
            status_code=self.status,
            media_type=self.media_type,
            headers=self.headers,
        )


@dataclass
class IngestContext:
    org: Organisation
    pseudonymisation_key: str
    locations: LocationMapSource
    pool: asyncpg.Pool


class Processor(Protocol):
    async def __call__(
        self, ctx: IngestContext, message: Message, commit: Commit, *, replay: bool
    ) -> Answer: ...


ErrorRenderer = Callable[[Problem, str], Answer]


def problem_answer(problem: Problem, endpoint: str) -> Answer:
    return Answer(problem.status, problem.body(endpoint), PROBLEM_JSON, problem.headers)


async def quarantine(
    pool: asyncpg.Pool, source: str | None, endpoint: str, parts: Sequence[Rejected]
) -> None:
    """Keep rejected messages (or parts of one) raw, one row each; tell each outcome its row id."""
    if not parts:
        return
    async with pool.acquire() as conn:
        ids = await next_ids(conn, "quarantine", len(parts))
        await conn.execute(
            """
            INSERT INTO quarantine (id, source, endpoint, content_type, body, status_code, problem)
            SELECT u.id, $1, $2, u.content_type, u.body, u.status_code, u.problem
            FROM unnest($3::bigint[], $4::text[], $5::bytea[], $6::int[], $7::jsonb[])
                AS u(id, content_type, body, status_code, problem)
            """,
            source,
            endpoint,
            ids,
            [p.content_type for p in parts],
            [p.body for p in parts],
            [p.status for p in parts],
            [p.problem for p in parts],
        )
    for part, row_id in zip(parts, ids, strict=True):
        if part.outcome is not None:
            part.outcome["quarantine_id"] = row_id


def context_of(runtime: Runtime) -> IngestContext:
    ctx = runtime.extra["ingest"]
    assert isinstance(ctx, IngestContext)
    return ctx


async def run_live(request: Request, processor: Processor, render_error: ErrorRenderer) -> Response:
    """Read, authenticate, process and answer one webhook request; quarantine whatever was rejected.

    Webhook routes take no dependencies: FastAPI runs a plain-function dependency (such as
    `CurrentRuntime`) in a thread pool, which costs more than the rest of a small request.
    """
    runtime: Runtime = request.app.state.runtime
    endpoint = request.scope["path"]  # what `request.url.path` gives on these routes, without building a URL
    content_type = request.headers.get("content-type", "")
    source = request.headers.get(SOURCE_HEADER)
    body = b""
    try:
        body = await read_body(request, runtime.settings.max_body_bytes)
        source = authenticate(request, runtime, body)
    except Problem as problem:
        answer = render_error(problem, endpoint)
        if problem.status != 429:  # a rate-limited sender retries; nothing was rejected
            await quarantine(
                runtime.db, source, endpoint, [Rejected(body, content_type, problem.status, answer.content)]
            )
        return answer.response()
    writer: GroupCommitWriter = runtime.extra["writer"]
    answer = await processor(
        context_of(runtime), Message(source, endpoint, content_type, body), writer.submit, replay=False
    )
    await quarantine(runtime.db, source, endpoint, answer.rejected)
    return answer.response()
