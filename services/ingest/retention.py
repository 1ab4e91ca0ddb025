"""Retention of what ingest keeps as received: raw messages and quarantine rows are purged when old.

A purge deletes in bounded batches, each its own short statement (rows locked by someone else are
left for the next run), so it never holds up the webhooks. What is still needed is kept whatever its
age:

- a raw message that a quarantine row links to (a replay's result), until that row is purged;
- a raw message whose events are not all published yet: one received at or after the oldest outbox
  row the relay has not published (a raw message and its events share a transaction, so they share
  the time too). Until the broker has them, the raw message is what they could be rebuilt from.

Re-send recognition does not read the raw store (HL7 reads `hl7_message`, kept `ICC_HL7_DEDUP_DAYS`;
FHIR its versions; JSON the outbox), so purging a raw message never makes a re-send look new.

Each batch adds what it deleted to an `ingest_counter` of source '' (`purged.raw_message`,
`purged.quarantine`) in the same statement; `GET /v1/quarantine` shows the totals, and each run that
deleted something logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from shared.settings import Settings
from shared.supervise import supervise

log = logging.getLogger(__name__)

PURGED_COUNTER = "purged."
BATCH_ROWS = 1000
EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept; None keeps it forever."""

    raw: timedelta | None
    replayed: timedelta | None  # a quarantine row once replayed, from its replay
    open: timedelta | None  # a quarantine row never replayed, from when it was last seen

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        def days(value: float) -> timedelta | None:
            return timedelta(days=value) if value > 0 else None

        return cls(
            days(settings.raw_retention_days),
            days(settings.quarantine_retention_days),
            days(settings.quarantine_open_retention_days),
        )


@dataclass
class Purged:
    raw_message: int = 0
    quarantine: int = 0


def _counted(delete: str) -> str:
    """`delete` (… RETURNING 1), its rows added to the counter named `$1`, and how many there were."""
    return f"""
        WITH gone AS ({delete}), counted AS (
            INSERT INTO ingest_counter (source, name, value)
            SELECT '', $1, count(*) FROM gone HAVING count(*) > 0
            ON CONFLICT (source, name) DO UPDATE
               SET value = ingest_counter.value + excluded.value, updated_at = now()
        )
        SELECT count(*) FROM gone
    """


# The conditions are on the deleted row itself too: a row that changed since it was chosen (a
# refusal seen again, a replay) is judged again as it now is.
_QUARANTINE_DUE = """
    (q.replayed_at < now() - $2::interval
     OR (q.replayed_at IS NULL AND q.last_seen_at < now() - $3::interval))
"""
_PURGE_QUARANTINE = _counted(
    f"""
    DELETE FROM quarantine q
    WHERE q.id IN (SELECT q.id FROM quarantine q WHERE {_QUARANTINE_DUE} LIMIT $4 FOR UPDATE SKIP LOCKED)
      AND {_QUARANTINE_DUE}
    RETURNING 1
    """
)
_PURGE_RAW = _counted(
    """
    DELETE FROM raw_message
    WHERE id IN (
        SELECT r.id FROM raw_message r
        WHERE r.received_at < $2
          AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.raw_message_id = r.id)
        ORDER BY r.received_at LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
    """
)


async def raw_cutoff(pool: asyncpg.Pool, retention: timedelta) -> datetime:
    """Raw messages received before this may go: older than `retention`, and older than every outbox
    row the relay has not published (no position yet: none is published)."""
    cutoff = await pool.fetchval(
        """
        SELECT least(now() - $1::interval, (
            SELECT min(created_at) FROM outbox
            WHERE id > (SELECT coalesce(min(last_id), 0) FROM relay_position)
        ))
        """,
        retention,
    )
    assert isinstance(cutoff, datetime)
    return cutoff


async def purge(
    pool: asyncpg.Pool, retention: Retention, stop: asyncio.Event | None = None, *, batch: int = BATCH_ROWS
) -> Purged:
    """Delete what is past retention, batch by batch, until nothing is left to delete (or `stop`).

    Quarantine first: a replayed row that goes frees the raw message it links to.
    """
    purged = Purged()

    async def batches(sql: str, *args: object) -> int:
        total = 0
        while stop is None or not stop.is_set():
            deleted = int(await pool.fetchval(sql, *args, batch))
            total += deleted
            if deleted < batch:
                break
        return total

    if retention.replayed is not None or retention.open is not None:
        # a kind kept forever has a NULL interval: no row of it is older than that
        purged.quarantine = await batches(
            _PURGE_QUARANTINE, PURGED_COUNTER + "quarantine", retention.replayed, retention.open
        )
    if retention.raw is not None:
        cutoff = await raw_cutoff(pool, retention.raw)
        purged.raw_message = await batches(_PURGE_RAW, PURGED_COUNTER + "raw_message", cutoff)
    return purged


async def keep_purged(
    pool: asyncpg.Pool, retention: Retention, stop: asyncio.Event, every: float = EVERY_SECONDS
) -> None:
    """Purge at start and then every `every` seconds until `stop`; a failed run (the database away,
    or a fault) is logged and tried again after a backoff, so the loop never dies quietly."""

    async def run_once() -> None:
        purged = await purge(pool, retention, stop)
        if purged.raw_message or purged.quarantine:
            log.info(
                "retention: purged %d raw messages and %d quarantine rows",
                purged.raw_message,
                purged.quarantine,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)

    await supervise("retention purge", run_once, stop, max_backoff=60.0)
