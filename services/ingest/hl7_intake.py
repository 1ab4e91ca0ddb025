"""Taking in HL7 v2 ADT, whichever way it arrives (HTTP or MLLP): parse, map, commit, acknowledge.

The answer is given only after the outcome is stored: an accepted message's raw text, events,
idempotency record and counters commit in one group-commit transaction (`Hl7Bookkeeping` is the
writer step that does the HL7 part); a rejected message is kept raw in the quarantine with the reason.

Only a database that cannot store anything just now is answered "send it again" (AR, ERR 207). A
message the database refuses (`Unstorable`), or one ICC itself fails on, would fail the same way
again: it is answered AE and kept in the quarantine, so an in-order feed goes on past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.group_commit import DB_ERRORS, GroupCommitWriter, Inbound, Unstorable
from services.ingest.hl7_ack import build_ack, build_batch_ack
from services.ingest.hl7_adt import MappedAdt, UnmappedLocation, map_adt
from services.ingest.hl7_er7 import (
    AckCode,
    ErrorCode,
    ErrorLocation,
    Hl7Error,
    Hl7Problem,
    MessageHeader,
    content_sha256,
    decode,
    read_header,
    read_message,
    reject,
    split_body,
)
from services.ingest.intake import Answer, Commit, IngestContext, Message, Rejected
from services.ingest.intake import quarantine as keep_refused
from services.ingest.location_source import LocationMapSource, list_unmapped
from shared.events import utcnow
from shared.problems import PROBLEM_BASE
from shared.pseudonymise import IdKind, pseudonymise
from shared.sealed import Sealer

log = logging.getLogger(__name__)

# HTTP status for each outcome; MLLP has none, but the quarantine records the same number.
HTTP_STATUS = {AckCode.accept: 200, AckCode.reject: 400, AckCode.error: 422}
RETRY_STATUS = 503


@dataclass
class Hl7Commit:
    """What the writer step needs to know about one accepted message, and what it answers."""

    source: str
    control_id: str
    sha256: bytes
    trigger: str
    ack: str
    mapped: MappedAdt
    answer: str | None = None  # the stored ACK, when the message turned out to be a re-send
    duplicate: bool = False
    reused_control_id: bool = False


@dataclass(frozen=True)
class Outcome:
    ack: str
    code: AckCode
    http_status: int
    duplicate: bool = False


@dataclass
class Reply:
    """The answer to one body: one ACK, or a batch of them."""

    ack: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return max(o.http_status for o in self.outcomes) if self.outcomes else 400


class Hl7Intake:
    def __init__(
        self, writer: GroupCommitWriter, pool: asyncpg.Pool, locations: LocationMapSource, key: str
    ) -> None:
        self.writer = writer
        self.pool = pool
        self.locations = locations
        self._key = key

    def pseudonymise(self, kind: IdKind, value: str, issuer: str) -> str:
        return pseudonymise(self._key, kind, value, issuer=issuer)

    async def receive(self, body: bytes, *, source: str, endpoint: str, content_type: str) -> Reply:
        """Everything one request or MLLP frame needs: the reply to send back."""
        now = utcnow()
        try:
            parts = split_body(decode(body))
        except Hl7Error as exc:
            outcome = await self._rejected(exc, body, source, endpoint, content_type, now)
            return Reply(outcome.ack, [outcome])
        if not parts.batch:
            outcome = await self._one(parts.messages[0], body, source, endpoint, content_type, now)
            return Reply(outcome.ack, [outcome])
        # queued in order, so a batch's messages commit in order (usually in one transaction)
        outcomes = list(
            await asyncio.gather(
                *(self._one(m, m.encode(), source, endpoint, content_type, now) for m in parts.messages)
            )
        )
        return Reply(build_batch_ack(parts, [o.ack for o in outcomes], now=now), outcomes)

    async def failed(self, body: bytes, *, source: str, endpoint: str, content_type: str) -> Reply:
        """The reply when taking `body` failed in ICC itself, outside any one message (the transports'
        last resort; the caller logs the fault): kept in the quarantine, answered AE with ERR 207."""
        outcome = await self._rejected(internal_error(body), body, source, endpoint, content_type, utcnow())
        return Reply(outcome.ack, [outcome])

    async def _one(
        self, message: str, raw: bytes, source: str, endpoint: str, content_type: str, now: datetime
    ) -> Outcome:
        try:
            return await self._take(message, raw, source, endpoint, content_type, now)
        except Exception:  # a fault in ICC on this message: logged, answered and kept; the feed goes on
            log.exception("HL7 message from %s failed in ICC", source)
            return await self._rejected(internal_error(message), raw, source, endpoint, content_type, now)

    async def _take(
        self, message: str, raw: bytes, source: str, endpoint: str, content_type: str, now: datetime
    ) -> Outcome:
        sha = content_sha256(message)
        try:
            adt = read_message(message)
            mapped = map_adt(
                adt,
                source=source,
                content_sha256=sha,
                mapper=self.locations.current(),
                pseudonymise=self.pseudonymise,
                bounds=EventTimeBounds.at_receipt(now),
            )
        except Hl7Error as exc:
            return await self._rejected(exc, raw, source, endpoint, content_type, now)
        ack = _accept(adt.header, mapped, now)
        commit = Hl7Commit(source, adt.header.control_id, sha, adt.trigger, ack, mapped)
        item = Inbound(source, endpoint, content_type, raw, mapped.outbox_events(), context=commit)
        try:
            await self.writer.submit(item)
        except Unstorable as exc:
            problem = Hl7Problem(ErrorCode.data_type_error, f"ICC cannot store this message: {exc}")
            refused = Hl7Error(AckCode.error, problem, adt.header)
            return await self._rejected(refused, raw, source, endpoint, content_type, now)
        except DB_ERRORS as exc:
            log.error("HL7 %s from %s not stored: %s", adt.header.control_id, source, exc)
            return _retry(adt.header, now)
        return Outcome(commit.answer or ack, AckCode.accept, 200, duplicate=commit.duplicate)

    async def _rejected(
        self,
        exc: Hl7Error,
        raw: bytes,
        source: str | None,
        endpoint: str,
        content_type: str,
        now: datetime,
    ) -> Outcome:
        """Keep the message in the quarantine with the reason; answer AE/AR (or ask for a retry)."""
        status = HTTP_STATUS[exc.ack]
        ack = build_ack(exc.header, exc.ack, [exc.problem], now=now)
        try:
            await quarantine(self.pool, self.writer.sealer, raw, source, endpoint, content_type, status, exc)
        except DB_ERRORS as db_error:
            log.error("HL7 message from %s could not be quarantined: %s", source, db_error)
            return _retry(exc.header, now)
        return Outcome(ack, exc.ack, status)


async def replay(ctx: IngestContext, message: Message, commit: Commit, *, replay: bool) -> Answer:
    """A quarantined HL7 message run again (`POST /v1/quarantine/{id}/replay`), through the same
    parsing and mapping as when it arrived, with the location map re-read first.

    The answer carries the ACK the message would get now. Its raw text, events and HL7 bookkeeping
    commit in the replay's transaction; a message refused again commits nothing.
    """
    now = utcnow()
    try:
        parts = split_body(decode(message.body))
        if parts.batch or len(parts.messages) != 1:
            raise reject(
                ErrorCode.segment_sequence,
                "a batch is replayed message by message: each refused message has its own row",
                ErrorLocation("BHS"),
            )
        text = parts.messages[0]
        adt = read_message(text)
        mapped = map_adt(
            adt,
            source=message.source,
            content_sha256=content_sha256(text),
            mapper=ctx.locations.current(force=replay),
            pseudonymise=lambda kind, value, issuer: pseudonymise(
                ctx.pseudonymisation_key, kind, value, issuer=issuer
            ),
            bounds=EventTimeBounds.at_receipt(now),  # a replay is judged at its own time
        )
    except Hl7Error as exc:
        status = HTTP_STATUS[exc.ack]
        ack = build_ack(exc.header, exc.ack, [exc.problem], now=now)
        return Answer(
            status, {"ack_code": exc.ack.value, "ack": ack, **problem_body(exc, status, message.endpoint)}
        )
    ack = _accept(adt.header, mapped, now)
    hl7 = Hl7Commit(message.source, adt.header.control_id, content_sha256(text), adt.trigger, ack, mapped)
    item = Inbound(
        message.source,
        message.endpoint,
        message.content_type,
        message.body,
        mapped.outbox_events(),
        context=hl7,
    )
    new = await commit(item)
    return Answer(
        200,
        {"ack_code": AckCode.accept.value, "ack": hl7.answer or ack, "duplicate": hl7.duplicate},
        committed=True,
        raw_id=item.raw_id,
        event_ids=sorted(new),
    )


def internal_error(message: str | bytes) -> Hl7Error:
    """What a message ICC itself failed on is answered: AE with ERR 207, addressed to its MSH (AR
    when not even that can be read). Not "send it again": it would fail the same way; it is kept in
    the quarantine, to be replayed once ICC is fixed."""
    try:
        text = message if isinstance(message, str) else split_body(decode(message)).messages[0]
        header: MessageHeader | None = read_header(text)
    except Hl7Error as exc:
        header = exc.header
    except Exception:  # whatever failed on the message may fail here again
        header = None
    problem = Hl7Problem(
        ErrorCode.internal_error,
        "ICC failed on this message (a fault in ICC, logged); it is kept to be replayed once fixed: "
        "do not send it again",
    )
    return Hl7Error(AckCode.error if header is not None else AckCode.reject, problem, header)


def _retry(header: MessageHeader | None, now: datetime) -> Outcome:
    problem = Hl7Problem(
        ErrorCode.internal_error, "ICC could not store the message just now; send it again", None
    )
    return Outcome(build_ack(header, AckCode.reject, [problem], now=now), AckCode.reject, RETRY_STATUS)


def _accept(header: MessageHeader, mapped: MappedAdt, now: datetime) -> str:
    """The AA, with a warning for each location the mapping does not know."""
    warnings = [_warning(u) for u in mapped.unmapped]
    text = f"accepted; {len(warnings)} location(s) not in the location mapping" if warnings else ""
    return build_ack(header, AckCode.accept, warnings, now=now, text=text)


def _warning(unmapped: UnmappedLocation) -> Hl7Problem:
    segment, _, number = unmapped.field.partition("-")
    return Hl7Problem(
        ErrorCode.table_value_not_found,
        f"location {unmapped.example or '(empty)'}: {unmapped.kind} {unmapped.code} is not in the location "
        "mapping; accepted and listed as unmapped",
        ErrorLocation(segment, 1, int(number) if number.isdigit() else 0),
        severity="W",
    )


def problem_body(exc: Hl7Error, status: int, endpoint: str) -> dict[str, object]:
    """The quarantine's record of why: an RFC 9457 problem with the HL7 details."""
    header = exc.header
    where = exc.problem.location
    return {
        "type": PROBLEM_BASE + ("hl7-rejected" if exc.ack is AckCode.reject else "hl7-error"),
        "title": "HL7 message rejected" if exc.ack is AckCode.reject else "HL7 message has errors",
        "status": status,
        "detail": exc.problem.message,
        "instance": endpoint,
        "ack_code": exc.ack.value,
        "control_id": header.control_id if header else None,
        "trigger": header.trigger if header else None,
        "errors": [
            {
                "location": str(where) if where else None,
                "code": exc.problem.code.value,
                "message": exc.problem.message,
            }
        ],
    }


async def quarantine(
    pool: asyncpg.Pool,
    sealer: Sealer,
    raw: bytes,
    source: str | None,
    endpoint: str,
    content_type: str,
    status: int,
    exc: Hl7Error,
) -> None:
    """Keep a refused message (the same one refused again counts on its open row), and count it."""
    counter = f"hl7.{'rejected' if exc.ack is AckCode.reject else 'error'}"
    refused = Rejected(raw, content_type, status, problem_body(exc, status, endpoint))
    await keep_refused(pool, sealer, source, endpoint, [refused], counter=counter)


class Hl7Bookkeeping:
    """Group-commit step: idempotency by (source, control id, content), unmapped locations, counters.

    `before` answers re-sent messages with the ACK stored for them (they write nothing) and marks
    reused control ids; `after` records the new messages, their unmapped locations and the counts,
    in the same transaction as their events.
    """

    async def before(self, conn: asyncpg.Connection, batch: list[Inbound]) -> list[Inbound]:
        commits = [i.context for i in batch if isinstance(i.context, Hl7Commit)]
        if not commits:
            return batch
        rows = await conn.fetch(
            """
            SELECT m.source, m.control_id, m.content_sha256, m.ack FROM hl7_message m
            JOIN unnest($1::text[], $2::text[]) AS k(source, control_id)
              ON m.source = k.source AND m.control_id = k.control_id
            """,
            [c.source for c in commits],
            [c.control_id for c in commits],
        )
        known: dict[tuple[str, str], dict[bytes, str]] = {}
        for row in rows:
            known.setdefault((row["source"], row["control_id"]), {})[bytes(row["content_sha256"])] = row[
                "ack"
            ]
        keep: list[Inbound] = []
        duplicates: Counter[str] = Counter()
        for item in batch:
            commit = item.context
            if not isinstance(commit, Hl7Commit):
                keep.append(item)
                continue
            seen = known.setdefault((commit.source, commit.control_id), {})
            if commit.sha256 in seen:
                commit.answer, commit.duplicate = seen[commit.sha256], True
                duplicates[commit.source] += 1
                continue
            # decided again when a failed batch is committed one message at a time
            commit.answer, commit.duplicate = None, False
            commit.reused_control_id = bool(seen)
            seen[commit.sha256] = commit.ack
            keep.append(item)
        if duplicates:
            await _count(conn, {(source, "hl7.duplicate"): n for source, n in duplicates.items()})
        return keep

    async def after(self, conn: asyncpg.Connection, written: list[Inbound]) -> None:
        commits = [i.context for i in written if isinstance(i.context, Hl7Commit)]
        if not commits:
            return
        stored = await conn.fetch(
            """
            INSERT INTO hl7_message (source, control_id, content_sha256, trigger, event_count, ack)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::int[], $6::text[])
            ON CONFLICT DO NOTHING
            RETURNING source, control_id, content_sha256
            """,
            [c.source for c in commits],
            [c.control_id for c in commits],
            [c.sha256 for c in commits],
            [c.trigger for c in commits],
            [len(c.mapped.envelopes) for c in commits],
            [c.ack for c in commits],
        )
        if len(stored) != len(commits):
            await self._raced(conn, commits, stored)
        counts: Counter[tuple[str, str]] = Counter()
        unmapped: list[tuple[str, UnmappedLocation]] = []
        for commit in commits:
            if commit.duplicate:
                continue
            counts[(commit.source, "hl7.accepted")] += 1
            if commit.reused_control_id:
                counts[(commit.source, "hl7.control_id_reused")] += 1
            for note in commit.mapped.notes:
                counts[(commit.source, f"hl7.{note}")] += 1
            for place in commit.mapped.unmapped:
                counts[(commit.source, "hl7.unmapped_location")] += 1
                unmapped.append((commit.source, place))
        await _count(conn, counts)
        await list_unmapped(conn, unmapped)

    async def _raced(
        self, conn: asyncpg.Connection, commits: Sequence[Hl7Commit], stored: list[asyncpg.Record]
    ) -> None:
        """Another transaction took the same message first: answer as it did (events dedup by id)."""
        new = {(r["source"], r["control_id"], bytes(r["content_sha256"])) for r in stored}
        for commit in commits:
            if (commit.source, commit.control_id, commit.sha256) in new:
                continue
            commit.answer = await conn.fetchval(
                "SELECT ack FROM hl7_message WHERE source = $1 AND control_id = $2 AND content_sha256 = $3",
                commit.source,
                commit.control_id,
                commit.sha256,
            )
            commit.duplicate = True


async def _count(conn: asyncpg.Connection, counts: dict[tuple[str, str], int]) -> None:
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        """
        INSERT INTO ingest_counter (source, name, value)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
        ON CONFLICT (source, name) DO UPDATE
           SET value = ingest_counter.value + excluded.value, updated_at = now()
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [counts[k] for k in keys],
    )


async def prune_idempotency(pool: asyncpg.Pool, retention: timedelta) -> int:
    """Forget messages taken longer ago than `retention`: a re-send after that is processed again
    (its events keep their ids, so the outbox still drops them while it retains them)."""
    status = await pool.execute("DELETE FROM hl7_message WHERE received_at < now() - $1::interval", retention)
    return int(status.split()[-1])


async def keep_pruned(
    pool: asyncpg.Pool, retention: timedelta, stop: asyncio.Event, every: float = 3600
) -> None:
    while not stop.is_set():
        try:
            pruned = await prune_idempotency(pool, retention)
            if pruned:
                log.info("forgot %d HL7 messages older than %s", pruned, retention)
        except DB_ERRORS as exc:
            log.warning("pruning HL7 idempotency records failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
