"""Group commit: concurrent webhook requests share one database transaction.

A request is answered only after its raw message and events are committed. While one batch commits,
the next requests queue up and go together in the following one, so throughput grows with load
instead of paying one transaction per request.

An interface with bookkeeping of its own (HL7 idempotency, unmapped locations) adds a `BatchStep`:
it runs inside the same transaction, before the raw messages and events are written (and may settle
items itself, e.g. a re-sent message, which are then not written) and after them.
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

log = logging.getLogger(__name__)


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
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 1000, steps: Sequence[BatchStep] = ()) -> None:
        self.pool = pool
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
            try:
                inserted = await self._commit(batch)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.error("group commit of %d messages failed: %s", len(batch), exc)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
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
        inserted = await write_batch(conn, batch)
        for step in self.steps:
            await step.after(conn, batch)
        return inserted


async def write_batch(conn: asyncpg.Connection, batch: Sequence[Inbound]) -> set[uuid.UUID]:
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
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
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
        [i.body for i in kept],
        [len(i.events) for i in kept],
        APPEND_LOCK,
    )
    for item, row in zip(kept, rows, strict=True):
        item.raw_id = int(row[0])
    return await append(conn, [e for i in kept for e in i.events], locked=True)
