"""Group commit: concurrent webhook requests share one database transaction.

A request is answered only after its raw message and events are committed. While one batch commits,
the next requests queue up and go together in the following one, so throughput grows with load
instead of paying one transaction per request.

An interface with bookkeeping of its own (HL7 idempotency, unmapped locations) adds a `BatchStep`:
it runs inside the same transaction, before the raw messages and events are written (and may settle
items itself, e.g. a re-sent message, which are then not written) and after them.

One message whose data PostgreSQL refuses (a data exception, a broken constraint) must not fail the
others that share its transaction: the batch is then committed again one message at a time, in order,
and only that message gets `Unstorable`, which each interface answers as a refusal of the message
(never "send it again": it would fail the same way). A fault in ICC itself is isolated the same way
(that message gets the exception). Any other database error (a lost connection, a server shutting
down) fails the whole batch as it is, and is answered "send it again". So does a data exception that
is about the database rather than the data (a sequence at its maximum value): it would refuse every
message alike, and the messages are not at fault.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from shared.outbox import APPEND_LOCK, OutboxEvent, append
from shared.sealed import Sealer

log = logging.getLogger(__name__)


DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# What PostgreSQL says about the data written rather than about itself: SQLSTATE classes 22 (data
# exception: a NUL character in text, a number out of range) and 23 (integrity constraint violation).
DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# Data exceptions that say the database has run out of something, not that the data is wrong: a
# sequence at its maximum value (2200H: ids for raw messages, events, quarantine rows) refuses every
# message until someone raises it. They fail the batch as any database error does ("send it again").
DATABASE_LIMITS = (asyncpg.exceptions.SequenceGeneratorLimitExceededError,)


def refuses_the_data(exc: BaseException) -> bool:
    """Whether the database refused the data written (the message's fault), not failed itself."""
    return isinstance(exc, DATA_ERRORS) and not isinstance(exc, DATABASE_LIMITS)


class Unstorable(Exception):
    """The database refused this message's data; the other messages of its batch were committed."""

    def __init__(self, cause: asyncpg.PostgresError) -> None:
        super().__init__(f"the database refused its data ({cause.sqlstate}: {cause})")
        self.cause = cause


# Events that depend on what the database already knows (a FHIR encounter's last location) are made
# inside the commit's transaction, after the append lock, so concurrent messages see each other's result.
Prepare = Callable[[asyncpg.Connection], Awaitable[Sequence[OutboxEvent]]]


@dataclass
class Inbound:
    source: str
    endpoint: str
    content_type: str
    body: bytes
    events: Sequence[OutboxEvent]
    prepare: Prepare | None = None
    context: Any = None  # what a BatchStep needs to know about this message (and may answer in)
    done: asyncio.Future[set[uuid.UUID]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    raw_id: int | None = None  # the raw_message row, once committed
    error: Exception | None = None  # why `prepare` refused this message (the others still commit)


class BatchStep(Protocol):
    async def before(self, conn: asyncpg.Connection, batch: list[Inbound]) -> list[Inbound]:
        """Return the items still to be written; the others are settled by the step."""

    async def after(self, conn: asyncpg.Connection, written: list[Inbound]) -> None: ...


class GroupCommitWriter:
    def __init__(
        self, pool: asyncpg.Pool, *, sealer: Sealer, max_batch: int = 1000, steps: Sequence[BatchStep] = ()
    ) -> None:
        self.pool = pool
        self.sealer = sealer  # raw bodies are stored sealed (`shared.sealed`)
        self.max_batch = max_batch
        self.steps = tuple(steps)
        self.queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self.batches = 0

    async def submit(self, item: Inbound) -> set[uuid.UUID]:
        """Commit the message; return the ids of its events that were new (the rest were duplicates)."""
        await self.queue.put(item)
        return await item.done

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            submitted = [item.events for item in batch]  # `prepare` adds to them; a retry starts again
            failure: Exception
            try:
                inserted = await self._commit(batch)
            except DB_ERRORS as exc:
                if refuses_the_data(exc):
                    failure = exc
                else:
                    log.error("group commit of %d messages failed: %s", len(batch), exc)
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    continue
            # a fault in ICC (in a step, say) is isolated alike, and the writer goes on
            except Exception as exc:
                failure = exc
            else:
                self._settle(batch, inserted)
                continue
            if len(batch) == 1:
                self._fail(batch[0], failure)
                continue
            log.warning(
                "group commit of %d messages failed on one of them (%s); committing them one by one",
                len(batch),
                failure,
            )
            await self._commit_each(batch, submitted)

    async def _commit_each(self, batch: list[Inbound], submitted: list[Sequence[OutboxEvent]]) -> None:
        """After a batch failed on one message: each message in its own transaction, in order."""
        for item, events in zip(batch, submitted, strict=True):
            if item.done.done():
                continue
            item.events, item.raw_id, item.error = events, None, None
            try:
                inserted = await self._commit([item])
            except DB_ERRORS as exc:
                if refuses_the_data(exc):
                    self._fail(item, exc)
                else:
                    log.error("commit of a message from %s failed: %s", item.source, exc)
                    item.done.set_exception(exc)
            except Exception as exc:  # as in `run`
                self._fail(item, exc)
            else:
                self._settle([item], inserted)

    def _fail(self, item: Inbound, exc: Exception) -> None:
        """This message alone fails: the database refused its data (`Unstorable`), or ICC failed on it
        (the exception itself, its traceback logged here)."""
        if isinstance(exc, asyncpg.PostgresError) and refuses_the_data(exc):
            log.error("a message from %s to %s refused by the database: %s", item.source, item.endpoint, exc)
            item.done.set_exception(Unstorable(exc))
        else:
            log.error("a message from %s to %s failed in ICC", item.source, item.endpoint, exc_info=exc)
            item.done.set_exception(exc)

    def _settle(self, batch: list[Inbound], inserted: set[uuid.UUID]) -> None:
        for item in batch:
            if item.done.done():
                continue
            if item.error is not None:
                item.done.set_exception(item.error)
            else:
                item.done.set_result({e.event_id for e in item.events} & inserted)

    async def _commit(self, batch: list[Inbound]) -> set[uuid.UUID]:
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await self.write_in(conn, batch)
        self.batches += 1
        return inserted

    async def write_in(self, conn: asyncpg.Connection, batch: list[Inbound]) -> set[uuid.UUID]:
        """The batch with this writer's steps, inside the caller's transaction (a replay uses it too)."""
        for step in self.steps:
            batch = await step.before(conn, batch)
        if not batch:
            return set()
        inserted = await write_batch(conn, batch, self.sealer)
        for step in self.steps:
            await step.after(conn, batch)
        return inserted


async def write_batch(conn: asyncpg.Connection, batch: Sequence[Inbound], sealer: Sealer) -> set[uuid.UUID]:
    """Write raw messages and their events inside the caller's transaction; set each item's `raw_id`.

    An item whose `prepare` raises gets `error` set and is left out; its partial writes roll back
    to a savepoint, so the rest of the batch commits.
    """
    if any(i.prepare is not None for i in batch):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
    kept: list[Inbound] = []
    for item in batch:
        if item.prepare is not None:
            try:
                async with conn.transaction():
                    item.events = [*item.events, *await item.prepare(conn)]
            except DB_ERRORS:
                raise
            except Exception as exc:  # isolated: handed to the waiting request, which answers it
                item.error = exc
                continue
        kept.append(item)
    if not kept:
        return set()
    # one statement: the append lock (held to the commit), the raw messages' ids, in order, and their rows
    rows = await conn.fetch(
        """
        WITH locked AS MATERIALIZED (
            SELECT pg_advisory_xact_lock($6)
        ), numbered AS MATERIALIZED (
            SELECT nextval(pg_get_serial_sequence('raw_message', 'id')) AS id, u.*
            FROM locked, unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[])
                WITH ORDINALITY AS u(source, endpoint, content_type, body, event_count, n)
        ), written AS (
            INSERT INTO raw_message (id, source, endpoint, content_type, body, event_count)
            SELECT id, source, endpoint, content_type, body, event_count FROM numbered
        )
        SELECT id FROM numbered ORDER BY n
        """,
        [i.source for i in kept],
        [i.endpoint for i in kept],
        [i.content_type for i in kept],
        [sealer.seal(i.body) for i in kept],
        [len(i.events) for i in kept],
        APPEND_LOCK,
    )
    for item, row in zip(kept, rows, strict=True):
        item.raw_id = int(row[0])
    return await append(conn, [e for i in kept for e in i.events], locked=True)
