"""Applies bed events to the live ward boards and publishes what changed.

Runs inside the consumer's batch transaction: bed rows, ward summaries, the state deltas (through
the outbox) and the consumed offsets commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from services.command_centre.bed_board import Applied, BedRecord, WardBoard
from shared import topics
from shared.consumer import Delivery
from shared.events import BedStatus, BedStatusChanged, Envelope, utcnow
from shared.organisation import Organisation
from shared.outbox import OutboxEvent, append
from shared.topics import state_key

log = logging.getLogger(__name__)


class BedProjection:
    """In-memory boards of the wards seen since the last rebalance, backed by PostgreSQL."""

    def __init__(self, org: Organisation) -> None:
        self.org = org
        self.boards: dict[str, WardBoard] = {}
        self.ignored = 0

    def forget(self) -> None:
        self.boards.clear()

    async def _load(self, conn: asyncpg.Connection, ward_ids: set[str]) -> None:
        missing = [w for w in ward_ids if w not in self.boards]
        if not missing:
            return
        for ward_id in missing:
            self.boards[ward_id] = WardBoard(ward=self.org.wards[ward_id], system_id=self.org.system.id)
        for row in await conn.fetch(
            "SELECT ward_id, bed_id, status, occurred_at, event_id FROM bed_state WHERE ward_id = any($1)",
            missing,
        ):
            board = self.boards[row["ward_id"]]
            board.apply(
                row["bed_id"], BedRecord(BedStatus(row["status"]), row["occurred_at"], row["event_id"])
            )
        for row in await conn.fetch(
            "SELECT ward_id, version FROM ward_state WHERE ward_id = any($1)", missing
        ):
            self.boards[row["ward_id"]].version = row["version"]

    async def apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> None:
        changes: list[tuple[Envelope, BedStatusChanged]] = []
        for delivery in deliveries:
            payload = delivery.envelope.payload
            if not isinstance(payload, BedStatusChanged):
                continue
            bed = self.org.beds.get(payload.bed_id)
            if bed is None or bed.ward_id != payload.ward_id:
                # ingest validated it against its own copy of the organisation file; ours differs
                log.warning(
                    "bed %s of ward %s not in this organisation model", payload.bed_id, payload.ward_id
                )
                self.ignored += 1
                continue
            changes.append((delivery.envelope, payload))
        if not changes:
            return
        await self._load(conn, {p.ward_id for _, p in changes})

        accepted: dict[str, tuple[str, BedRecord]] = {}
        changed_wards: set[str] = set()
        for envelope, payload in changes:
            record = BedRecord(payload.status, envelope.occurred_at, envelope.event_id)
            outcome = self.boards[payload.ward_id].apply(payload.bed_id, record)
            if outcome is not Applied.stale:
                accepted[payload.bed_id] = (payload.ward_id, record)
            if outcome is Applied.changed:
                changed_wards.add(payload.ward_id)

        await conn.executemany(
            """
            INSERT INTO bed_state (bed_id, site_id, ward_id, status, occurred_at, event_id)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (bed_id) DO UPDATE
            SET status = $4, occurred_at = $5, event_id = $6, updated_at = now()
            """,
            [
                (bed_id, self.org.wards[ward_id].site_id, ward_id, r.status.value, r.occurred_at, r.event_id)
                for bed_id, (ward_id, r) in accepted.items()
            ],
        )
        if changed_wards:
            await self._publish(conn, changed_wards)

    async def _publish(self, conn: asyncpg.Connection, ward_ids: set[str]) -> None:
        rows = []
        deltas = []
        for ward_id in sorted(ward_ids):
            board = self.boards[ward_id]
            board.version += 1
            summary = board.summary()
            site_id = board.ward.site_id
            rows.append((ward_id, site_id, board.system_id, board.version, summary.model_dump(mode="json")))
            envelope = Envelope.wrap(
                summary,
                occurred_at=summary.as_of,
                recorded_at=utcnow(),
                source="command-centre",
                site_id=site_id,
                entity_id=ward_id,
            )
            deltas.append(
                OutboxEvent(
                    envelope.event_id,
                    topics.STATE.name,
                    state_key(site_id, ward_id),
                    envelope.to_json(),
                    envelope.event_type,
                )
            )
        await conn.executemany(
            """
            INSERT INTO ward_state (ward_id, site_id, system_id, version, summary) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (ward_id) DO UPDATE SET version = $4, summary = $5, updated_at = now()
            """,
            rows,
        )
        await append(conn, deltas)
