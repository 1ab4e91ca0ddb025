"""`POST /v1/quarantine/{id}/replay`: run a kept message again, after the mapping was fixed.

The row's body goes through the very processor its endpoint uses (same validation, same mapping,
the location map re-read first). A replay is all or nothing. If it succeeds, the raw message and its
events are committed in the same transaction that marks the row replayed and links them; if it
fails, nothing is committed and the attempt is recorded with its answer. Only messages that were
authenticated when they arrived can be replayed: a replay must never launder an unsigned message.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter

from services.ingest.event_time_bounds import received_by
from services.ingest.group_commit import GroupCommitWriter, Inbound
from services.ingest.intake import Message, Processor, context_of
from shared.auth import Role
from shared.problems import OrjsonResponse, Problem
from shared.runtime import CurrentRuntime, CurrentUser
from shared.sealed import SealError

router = APIRouter()

NOT_REPLAYABLE_STATUS = (401, 413, 429)


class _AlreadyReplayed(Exception):
    pass


def _admin_only(role: Role) -> None:
    if role is not Role.admin:
        raise Problem(
            403, "forbidden", "Admins only", "the quarantine holds raw messages; it needs the admin role"
        )


@router.post("/v1/quarantine/{quarantine_id}/replay", summary="Replay a quarantined message (admin)")
async def replay(quarantine_id: int, runtime: CurrentRuntime, user: CurrentUser) -> OrjsonResponse:
    _admin_only(user.role)
    pool = runtime.db
    row = await pool.fetchrow(
        "SELECT id, source, endpoint, content_type, body, status_code, replayed_at "
        "FROM quarantine WHERE id = $1",
        quarantine_id,
    )
    if row is None:
        raise Problem(404, "not-found", "No such quarantined message", f"no quarantine row {quarantine_id}")
    if row["replayed_at"] is not None:
        raise _conflict(quarantine_id)
    if row["source"] is None or row["status_code"] in NOT_REPLAYABLE_STATUS:
        raise Problem(
            409,
            "not-replayable",
            "Not replayable",
            f"the message was refused with {row['status_code']} before it was authenticated; "
            "the source must send it again",
        )
    processors: dict[str, Processor] = runtime.extra["replay_processors"]
    # MLLP rows name their listener (mllp://host:port); they replay as HL7 over HTTP does
    endpoint = "mllp" if row["endpoint"].startswith("mllp://") else row["endpoint"]
    processor = processors.get(endpoint)
    if processor is None:
        raise Problem(
            409, "not-replayable", "Not replayable", f"no replay for messages to {row['endpoint']!r}"
        )
    try:
        body = context_of(runtime).sealer.open(bytes(row["body"]))
    except SealError as exc:
        raise Problem(
            409, "not-replayable", "Not replayable", f"the stored body cannot be opened: {exc}"
        ) from exc
    message = Message(row["source"], row["endpoint"], row["content_type"], body)
    writer: GroupCommitWriter = runtime.extra["writer"]

    async def commit(item: Inbound) -> set[uuid.UUID]:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(
                "SELECT replayed_at FROM quarantine WHERE id = $1 FOR UPDATE", quarantine_id
            ):
                raise _AlreadyReplayed
            inserted = await writer.write_in(conn, [item])  # with the writer's steps (HL7 bookkeeping)
            if item.error is not None:
                raise item.error
            await _mark_replayed(conn, quarantine_id, item)
        return {e.event_id for e in item.events} & inserted

    try:
        with received_by(runtime.settings):  # its event times judged by this runtime's settings
            answer = await processor(context_of(runtime), message, commit, replay=True)
    except _AlreadyReplayed:
        raise _conflict(quarantine_id) from None
    outcome: dict[str, Any] = {"status": answer.status, "answer": answer.content}
    if answer.committed:
        await pool.execute(
            "UPDATE quarantine SET last_replay_outcome = $2 WHERE id = $1", quarantine_id, outcome
        )
        return OrjsonResponse(
            {
                "id": quarantine_id,
                "status": "replayed",
                "raw_message_id": answer.raw_id,
                "event_ids": [str(i) for i in answer.event_ids],
                "answer": answer.content,
            }
        )
    await pool.execute(
        """
        UPDATE quarantine SET replay_count = replay_count + 1, last_replay_at = now(),
            last_replay_outcome = $2 WHERE id = $1
        """,
        quarantine_id,
        outcome,
    )
    raise Problem(
        422,
        "replay-failed",
        "Replay failed",
        f"the message is still refused ({answer.status}); it stays in the quarantine",
        answer=answer.content,
    )


async def _mark_replayed(conn: asyncpg.Connection, quarantine_id: int, item: Inbound) -> None:
    await conn.execute(
        """
        UPDATE quarantine SET replayed_at = now(), last_replay_at = now(), replay_count = replay_count + 1,
            raw_message_id = $2, event_ids = $3::uuid[]
        WHERE id = $1
        """,
        quarantine_id,
        item.raw_id,
        [e.event_id for e in item.events],
    )


def _conflict(quarantine_id: int) -> Problem:
    return Problem(
        409, "already-replayed", "Already replayed", f"quarantine row {quarantine_id} was replayed"
    )
