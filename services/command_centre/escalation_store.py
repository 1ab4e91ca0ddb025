"""Escalations in PostgreSQL: load, save with optimistic concurrency, timeline, lifecycle events.

Every save runs inside the caller's transaction and appends `escalation.changed` to the outbox in
that same transaction, so the change, its audit trail and its event commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.command_centre.escalation_policy import RuleTrack, Severity
from services.command_centre.escalations import Escalation, Status, TimelineEntry
from services.command_centre.notifiers import enqueue
from shared import topics
from shared.auth import Tier
from shared.events import Envelope, EscalationChanged
from shared.outbox import OutboxEvent, append

COLUMNS = (
    "id, dedup_key, rule, tier, scope, origin_scope, site_id, severity, reason, values, status, owner, "
    "links, promote_at, snoozed_until, remind_at, flapping, version, created_at, updated_at"
)


def from_row(row: asyncpg.Record) -> Escalation:
    return Escalation(
        id=row["id"],
        dedup_key=row["dedup_key"],
        rule=row["rule"],
        tier=Tier(row["tier"]),
        scope=row["scope"],
        origin_scope=row["origin_scope"],
        site_id=row["site_id"],
        severity=Severity(row["severity"]),
        reason=row["reason"],
        values=dict(row["values"]),
        status=Status(row["status"]),
        owner=row["owner"],
        links=list(row["links"]),
        promote_at=row["promote_at"],
        snoozed_until=row["snoozed_until"],
        remind_at=row["remind_at"],
        flapping=row["flapping"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def active_for_site(conn: asyncpg.Connection, site_id: str) -> list[Escalation]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM escalation WHERE site_id = $1 AND status IN ('open', 'acknowledged')",
        site_id,
    )
    return [from_row(r) for r in rows]


async def get(conn: asyncpg.Connection, escalation_id: uuid.UUID, *, lock: bool = False) -> Escalation | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM escalation WHERE id = $1" + (" FOR UPDATE" if lock else ""), escalation_id
    )
    return from_row(row) if row is not None else None


async def save(
    conn: asyncpg.Connection,
    esc: Escalation,
    *,
    due_check: bool = False,
    notifiers: Sequence[str] = (),
) -> bool:
    """Write the escalation if nobody changed it meanwhile; False (nothing written) otherwise.

    New escalations insert (the active-dedup index turns a concurrent second into a no-op); known
    ones update `WHERE version = the version read` — and, for a promotion, only while the stored
    deadline has passed — so two replicas, or a replay after a crash, can never promote twice.
    """
    values = (
        esc.id,
        esc.dedup_key,
        esc.rule,
        esc.tier.value,
        esc.scope,
        esc.origin_scope,
        esc.site_id,
        esc.severity.value,
        esc.reason,
        esc.values,
        esc.status.value,
        esc.owner,
        esc.links,
        esc.promote_at,
        esc.snoozed_until,
        esc.remind_at,
        esc.flapping,
        esc.version + 1,
        esc.created_at,
        esc.updated_at,
    )
    if esc.version == 0:
        row = await conn.fetchrow(
            f"INSERT INTO escalation ({COLUMNS}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) "
            "ON CONFLICT (dedup_key) WHERE status IN ('open', 'acknowledged') DO NOTHING RETURNING id",
            *values,
        )
    else:
        row = await conn.fetchrow(
            """
            UPDATE escalation SET tier = $2, scope = $3, severity = $4, reason = $5, values = $6,
                status = $7, owner = $8, links = $9, promote_at = $10, snoozed_until = $11,
                remind_at = $12, flapping = $13, version = $14, updated_at = $15
            WHERE id = $1 AND version = $14 - 1
              AND ($16::timestamptz IS NULL OR promote_at <= $16)
            RETURNING id
            """,
            esc.id,
            esc.tier.value,
            esc.scope,
            esc.severity.value,
            esc.reason,
            esc.values,
            esc.status.value,
            esc.owner,
            esc.links,
            esc.promote_at,
            esc.snoozed_until,
            esc.remind_at,
            esc.flapping,
            esc.version + 1,
            esc.updated_at,
            esc.updated_at if due_check else None,
        )
    if row is None:
        return False
    esc.version += 1
    entries, esc.new_entries = esc.new_entries, []
    if entries:
        await conn.executemany(
            "INSERT INTO escalation_timeline (escalation_id, at, actor, action, tier, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [(esc.id, e.at, e.actor, e.action, e.tier.value, e.detail) for e in entries],
        )
    change = entries[-1] if entries else TimelineEntry(esc.updated_at, "icc", "updated", esc.tier)
    event = lifecycle_event(esc, change)
    await append(conn, [event])
    for notifier in notifiers:  # queued with the change, sent by the delivery loop
        await enqueue(conn, notifier, event.event_id, event.value)
    return True


def lifecycle_event(esc: Escalation, change: TimelineEntry) -> OutboxEvent:
    payload = EscalationChanged(
        escalation=esc.summary(),
        change={
            "at": change.at.isoformat(),
            "actor": change.actor,
            "action": change.action,
            "tier": change.tier.value,
            "detail": change.detail,
        },
    )
    envelope = Envelope.wrap(
        payload, occurred_at=change.at, source="command-centre", site_id=esc.site_id, entity_id=str(esc.id)
    )
    return OutboxEvent(
        envelope.event_id, topics.ESCALATIONS.name, esc.site_id, envelope.to_json(), envelope.event_type
    )


async def timeline(conn: asyncpg.Connection | asyncpg.Pool, escalation_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, actor, action, tier, detail FROM escalation_timeline "
        "WHERE escalation_id = $1 ORDER BY id",
        escalation_id,
    )
    return [dict(r) for r in rows]


async def load_tracks(conn: asyncpg.Connection, site_id: str) -> dict[str, RuleTrack]:
    """The rules' evaluation state for a site's scopes, as the last owner stored it."""
    return {
        row["dedup_key"]: RuleTrack(
            active=row["active"],
            holding_since=row["holding_since"],
            held_open=row["held_open"],
            changes=deque(row["changes"]),
        )
        for row in await conn.fetch(
            "SELECT dedup_key, active, holding_since, held_open, changes "
            "FROM escalation_rule_track WHERE site_id = $1",
            site_id,
        )
    }


async def save_tracks(conn: asyncpg.Connection, site_id: str, tracks: dict[str, RuleTrack]) -> None:
    """Store changed tracks in the caller's transaction; a track with nothing to remember is deleted."""
    idle = [key for key, track in tracks.items() if track.idle]
    kept = [(key, track) for key, track in tracks.items() if not track.idle]
    if idle:
        await conn.execute("DELETE FROM escalation_rule_track WHERE dedup_key = ANY($1::text[])", idle)
    if kept:
        await conn.executemany(
            """
            INSERT INTO escalation_rule_track
                (dedup_key, site_id, active, holding_since, held_open, changes)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (dedup_key) DO UPDATE
            SET site_id = $2, active = $3, holding_since = $4, held_open = $5, changes = $6,
                updated_at = now()
            """,
            [(key, site_id, t.active, t.holding_since, t.held_open, list(t.changes)) for key, t in kept],
        )
