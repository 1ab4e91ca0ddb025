"""The retention purge on real PostgreSQL: only what is past retention goes, never what is still needed."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from services.ingest.retention import Retention, purge
from shared.db import create_pool

pytestmark = pytest.mark.integration

DEFAULT = Retention(raw=timedelta(days=30), replayed=timedelta(days=30), open=timedelta(days=90))


async def raw(db: asyncpg.Connection, label: str, days_ago: float) -> int:
    row_id: int = await db.fetchval(
        "INSERT INTO raw_message (source, endpoint, content_type, body, event_count, received_at) "
        "VALUES ('pas', $1, 't', '\\x00', 1, now() - $2::interval) RETURNING id",
        label,
        timedelta(days=days_ago),
    )
    return row_id


async def quarantined(
    db: asyncpg.Connection,
    label: str,
    *,
    seen_days_ago: float,
    first_seen_days_ago: float | None = None,
    replayed_days_ago: float | None = None,
    raw_message_id: int | None = None,
) -> int:
    row_id: int = await db.fetchval(
        """
        INSERT INTO quarantine (source, endpoint, content_type, body, status_code, problem,
                                received_at, last_seen_at, replayed_at, raw_message_id)
        VALUES ('pas', $1, 't', '\\x00', 422, '{}', now() - $2::interval, now() - $3::interval,
                now() - $4::interval, $5)
        RETURNING id
        """,
        label,
        timedelta(days=first_seen_days_ago if first_seen_days_ago is not None else seen_days_ago),
        timedelta(days=seen_days_ago),
        timedelta(days=replayed_days_ago) if replayed_days_ago is not None else None,
        raw_message_id,
    )
    return row_id


async def left(db: asyncpg.Connection, table: str) -> set[str]:
    return {r["endpoint"] for r in await db.fetch(f"SELECT endpoint FROM {table}")}


async def test_purge_deletes_only_what_is_past_retention_and_keeps_what_is_needed(
    database_url: str, db: asyncpg.Connection
) -> None:
    for n in range(5):  # more than a batch: deleted batch by batch
        await raw(db, f"old-{n}", 40)
    await raw(db, "recent", 10)
    linked_by_recent_replay = await raw(db, "old-linked-by-kept-row", 40)
    linked_by_old_replay = await raw(db, "old-linked-by-purged-row", 45)
    await quarantined(
        db, "replayed-long-ago", seen_days_ago=50, replayed_days_ago=40, raw_message_id=linked_by_old_replay
    )
    await quarantined(
        db, "replayed-lately", seen_days_ago=50, replayed_days_ago=10, raw_message_id=linked_by_recent_replay
    )
    await quarantined(db, "open-unseen-for-100-days", seen_days_ago=100)
    await quarantined(
        db, "open-first-seen-100-days-ago-seen-yesterday", seen_days_ago=1, first_seen_days_ago=100
    )
    await quarantined(db, "open-40-days", seen_days_ago=40)
    # the relay has published up to this row; the next, 35 days old, is still waiting for the broker
    published = await db.fetchval(
        "INSERT INTO outbox (event_id, topic, key, value, created_at) "
        "VALUES (gen_random_uuid(), 't', 'k', '\\x00', now() - interval '50 days') RETURNING id"
    )
    await db.execute(
        "INSERT INTO relay_position (name, last_id, broker_incarnation) VALUES ('main', $1, 'x')", published
    )
    await db.execute(
        "INSERT INTO outbox (event_id, topic, key, value, created_at) "
        "VALUES (gen_random_uuid(), 't', 'k', '\\x00', now() - interval '35 days')"
    )
    await raw(db, "old-but-its-events-unpublished", 34)

    pool = await create_pool(database_url)
    try:
        purged = await purge(pool, DEFAULT, batch=2)
        assert (purged.quarantine, purged.raw_message) == (2, 6)
        assert await left(db, "quarantine") == {
            "replayed-lately",
            "open-first-seen-100-days-ago-seen-yesterday",
            "open-40-days",
        }
        assert await left(db, "raw_message") == {
            "recent",
            "old-linked-by-kept-row",
            "old-but-its-events-unpublished",
        }
        counters = dict(await db.fetch("SELECT name, value FROM ingest_counter WHERE source = ''"))
        assert counters == {"purged.quarantine": 2, "purged.raw_message": 6}

        # once published, that raw message goes too; a second run finds nothing else
        await db.execute("UPDATE relay_position SET last_id = (SELECT max(id) FROM outbox)")
        again = await purge(pool, DEFAULT)
        assert (again.quarantine, again.raw_message) == (0, 1)
        assert "old-but-its-events-unpublished" not in await left(db, "raw_message")

        # 0 days (None) keeps forever
        await db.execute("UPDATE quarantine SET replayed_at = now() - interval '400 days'")
        kept = await purge(pool, Retention(raw=None, replayed=None, open=None))
        assert (kept.quarantine, kept.raw_message) == (0, 0)
    finally:
        await pool.close()


async def test_a_raw_message_is_kept_while_no_relay_has_published_anything(
    database_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO outbox (event_id, topic, key, value, created_at) "
        "VALUES (gen_random_uuid(), 't', 'k', '\\x00', now() - interval '60 days')"
    )
    await raw(db, "before-the-outbox", 70)
    await raw(db, "after-the-outbox", 40)
    pool = await create_pool(database_url)
    try:
        purged = await purge(pool, DEFAULT)
    finally:
        await pool.close()
    assert purged.raw_message == 1
    assert await left(db, "raw_message") == {"after-the-outbox"}


async def test_a_refusal_being_seen_again_is_skipped_and_then_kept(
    database_url: str, db: asyncpg.Connection
) -> None:
    """A purge does not wait for a row another transaction holds (a repeat of that refusal being
    counted): it leaves it for the next run, which judges the row as it then is."""
    row_id = await quarantined(db, "open-old", seen_days_ago=100)
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as repeat, repeat.transaction():
            await repeat.execute("UPDATE quarantine SET last_seen_at = now() WHERE id = $1", row_id)
            assert (await purge(pool, DEFAULT)).quarantine == 0  # returns while the row is held
        assert (await purge(pool, DEFAULT)).quarantine == 0
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 1
