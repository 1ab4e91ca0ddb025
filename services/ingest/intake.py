"""What every ingest interface shares: a message in, an answer out, rejected parts to quarantine.

An interface is a `Processor`: it validates and maps a message and hands the events to a commit
function. The live route commits through the group-commit writer and quarantines what was rejected;
a quarantine replay runs the very same processor with a commit that also marks the quarantine row.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from fastapi import Request
from fastapi.responses import Response

from services.ingest.event_time_bounds import received_by
from services.ingest.group_commit import DB_ERRORS, GroupCommitWriter, Inbound
from services.ingest.location_source import LocationMapSource
from services.ingest.source_auth import authenticate, read_body
from shared.auth import SOURCE_HEADER
from shared.organisation import Organisation
from shared.problems import PROBLEM_JSON, Problem
from shared.runtime import Runtime
from shared.sealed import Sealer

log = logging.getLogger(__name__)

Commit = Callable[[Inbound], Awaitable[set[uuid.UUID]]]
# How long a sender is asked to wait before sending again when the database could not store its message.
RETRY_AFTER_SECONDS = 5

# What the quarantine keeps of a body that failed authentication: enough to see what was sent.
UNAUTHENTICATED_KEPT_BYTES = 4096


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
    sealer: Sealer  # seals raw bodies at rest (`shared.sealed`)


class Processor(Protocol):
    async def __call__(
        self, ctx: IngestContext, message: Message, commit: Commit, *, replay: bool
    ) -> Answer: ...


ErrorRenderer = Callable[[Problem, str], Answer]


def problem_answer(problem: Problem, endpoint: str) -> Answer:
    return Answer(problem.status, problem.body(endpoint), PROBLEM_JSON, problem.headers)


def unavailable() -> Problem:
    """The database failed (a lost connection, a server shutting down): nothing of the message is
    stored, and nothing is wrong with it, so it is not kept in the quarantine either."""
    return Problem(
        503,
        "unavailable",
        "Not stored, send it again",
        "ICC could not store the message just now; send it again, unchanged",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def nul_path(body: bytes) -> list[str | int] | None:
    """Where a JSON body holds a NUL character (`\\u0000`): the keys and indexes to a string (or key)
    holding one; None when none does, or when the body is not JSON (its own parser says so).

    No PostgreSQL text or JSON value can hold a NUL, so such a body is refused at the edge, before
    it can fail a group commit, and the answer names the field. Most bodies never hold the escape,
    so only those that do are parsed here.
    """
    if b"\\u0000" not in body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    todo: list[tuple[list[str | int], Any]] = [([], data)]  # not recursive: JSON may nest deeper
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return [*path, key.replace("\x00", "\\u0000")]
                todo.append(([*path, key], item))
        elif isinstance(value, list):
            todo.extend(([*path, index], item) for index, item in enumerate(value))
    return None


# What a problem says in prose (and may say with the time of receipt in it, as an event-time refusal
# does); the rest of it, its type, status, codes and the fields or locations it names, is the reason.
_PROSE = frozenset({"detail", "message", "diagnostics", "text", "timestamp"})


def _reason(value: Any) -> Any:
    """The machine-readable part of a problem (problem+json, OperationOutcome or HL7 problem)."""
    if isinstance(value, dict):
        return {k: _reason(v) for k, v in value.items() if k not in _PROSE}
    if isinstance(value, list):
        return [_reason(v) for v in value]
    return value


def refusal_key(
    source: str | None, endpoint: str, content_type: str, status: int, problem: Any, body_sha256: bytes
) -> bytes:
    """What makes two refusals the same one: same source and endpoint, same content type, same status
    and reason, same body (by digest; the stored bodies are sealed, so their bytes always differ)."""
    return hashlib.sha256(
        orjson.dumps(
            [source, endpoint, content_type, status, _reason(problem), body_sha256.hex()],
            option=orjson.OPT_SORT_KEYS,
        )
    ).digest()


# Insert each refusal, or count it on the open row of the same refusal: one statement, so two
# identical refusals at once still make one row (the unique index on open rows' `refusal_key`).
_KEEP = """
    INSERT INTO quarantine AS q (source, endpoint, content_type, body, status_code, problem,
                                 body_length, body_sha256, body_truncated, refusal_key, repeats)
    SELECT $1, $2, u.content_type, u.body, u.status_code, u.problem,
           u.body_length, u.body_sha256, u.body_truncated, u.refusal_key, u.times - 1
    FROM unnest($3::text[], $4::bytea[], $5::int[], $6::jsonb[], $7::bigint[], $8::bytea[],
                $9::bool[], $10::bytea[], $11::int[])
        AS u(content_type, body, status_code, problem, body_length, body_sha256, body_truncated,
             refusal_key, times)
    ON CONFLICT (refusal_key) WHERE replayed_at IS NULL
    DO UPDATE SET repeats = q.repeats + excluded.repeats + 1, last_seen_at = now()
    RETURNING q.id, q.refusal_key
"""


async def quarantine(
    pool: asyncpg.Pool,
    sealer: Sealer,
    source: str | None,
    endpoint: str,
    parts: Sequence[Rejected],
    *,
    kept_bytes: int | None = None,
    counter: str | None = None,
) -> None:
    """Keep rejected messages (or parts of one) raw and sealed, one row per refusal; tell each
    outcome its row id.

    The same refusal again (a sender re-sending what was refused) is counted on its open row
    (`repeats`, `last_seen_at`) rather than kept once more; once the row is replayed, the next one
    gets a row of its own. `kept_bytes` keeps only the start of each body (its full length and
    digest are kept too); `counter` names an `ingest_counter` of the source counting each refusal.
    """
    if not parts:
        return
    groups: dict[bytes, list[Rejected]] = {}
    digests: dict[bytes, bytes] = {}
    for part in parts:
        digest = hashlib.sha256(part.body).digest()
        key = refusal_key(source, endpoint, part.content_type, part.status, part.problem, digest)
        groups.setdefault(key, []).append(part)
        digests[key] = digest
    keys = sorted(groups)  # one order for every writer, so concurrent refusals cannot deadlock
    firsts = [groups[k][0] for k in keys]
    arguments = [
        source,
        endpoint,
        [p.content_type for p in firsts],
        [sealer.seal(p.body if kept_bytes is None else p.body[:kept_bytes]) for p in firsts],
        [p.status for p in firsts],
        [p.problem for p in firsts],
        [len(p.body) for p in firsts],
        [digests[k] for k in keys],
        [kept_bytes is not None and len(p.body) > kept_bytes for p in firsts],
        keys,
        [len(groups[k]) for k in keys],
    ]
    if counter is None:
        rows = await pool.fetch(_KEEP, *arguments)
    else:
        rows = await pool.fetch(
            f"""
            WITH kept AS ({_KEEP}), counted AS (
                INSERT INTO ingest_counter (source, name, value) VALUES (coalesce($1, ''), $12, $13)
                ON CONFLICT (source, name) DO UPDATE
                   SET value = ingest_counter.value + excluded.value, updated_at = now()
            )
            SELECT * FROM kept
            """,
            *arguments,
            counter,
            len(parts),
        )
    ids = {bytes(r["refusal_key"]): r["id"] for r in rows}
    for key, group in groups.items():
        for part in group:
            if part.outcome is not None:
                part.outcome["quarantine_id"] = ids[key]


async def quarantine_unauthenticated(
    pool: asyncpg.Pool, sealer: Sealer, source: str | None, endpoint: str, refused: Rejected
) -> None:
    """Keep a request refused before it was authenticated, bounded.

    Anyone who can reach the port can send one, so a 401's body is kept only up to
    `UNAUTHENTICATED_KEPT_BYTES`, with its full length and SHA-256 (such rows are never replayed, so
    the rest is never needed). A 413's body was never read; a 429 is not kept at all: the sender
    retries and nothing was wrong with the message. The same refusal again counts on its row.
    """
    if refused.status == 429:
        return
    kept_bytes = UNAUTHENTICATED_KEPT_BYTES if refused.status == 401 else None
    await quarantine(pool, sealer, source, endpoint, [refused], kept_bytes=kept_bytes)


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
        await quarantine_unauthenticated(
            runtime.db,
            context_of(runtime).sealer,
            source,
            endpoint,
            Rejected(body, content_type, problem.status, answer.content),
        )
        return answer.response()
    writer: GroupCommitWriter = runtime.extra["writer"]
    try:
        ctx = context_of(runtime)
        with received_by(runtime.settings):  # event times judged by this runtime's settings
            answer = await processor(
                ctx, Message(source, endpoint, content_type, body), writer.submit, replay=False
            )
        await quarantine(runtime.db, ctx.sealer, source, endpoint, answer.rejected)
    except DB_ERRORS as exc:  # what was committed stays committed: a re-send gets it as a duplicate
        log.error("%s from %s not stored: %s", endpoint, source, exc)
        return render_error(unavailable(), endpoint).response()
    return answer.response()
