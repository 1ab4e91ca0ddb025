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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from shared.outbox import OutboxEvent, append

log = logging.getLogger(__name__)


@dataclass
class Inbound:
    source: str
    endpoint: str
    content_type: str
    body: bytes
    events: Sequence[OutboxEvent]
    context: Any = None  # what a BatchStep needs to know about this message (and may answer in)
    done: asyncio.Future[set[uuid.UUID]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


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
                if not item.done.done():
                    item.done.set_result({e.event_id for e in item.events} & inserted)

    async def _commit(self, batch: list[Inbound]) -> set[uuid.UUID]:
        async with self.pool.acquire() as conn, conn.transaction():
            for step in self.steps:
                batch = await step.before(conn, batch)
            if not batch:
                return set()
            await conn.execute(
                """
                INSERT INTO raw_message (source, endpoint, content_type, body, event_count)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[])
                """,
                [i.source for i in batch],
                [i.endpoint for i in batch],
                [i.content_type for i in batch],
                [i.body for i in batch],
                [len(i.events) for i in batch],
            )
            inserted = await append(conn, [e for i in batch for e in i.events])
            for step in self.steps:
                await step.after(conn, batch)
        self.batches += 1
        return inserted
