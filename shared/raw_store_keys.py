"""Which raw store key sealed each stored body, and resealing them all under the current key.

The operator's side of key rotation (ADR 0008): `icc secrets raw-keys` counts the rows each key
sealed, `icc secrets reseal` brings every body under the current key, `icc secrets retire-raw-key`
drops a key no row needs any more. A sealed head names its key (`shared.sealed`), so PostgreSQL can
count and select rows by key without a body leaving the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from shared.sealed import KEY_ID_BYTES, MAGIC, Sealer, SealError

# Every table that keeps message bodies sealed (in its `body` column).
SEALED_TABLES = ("raw_message", "quarantine")

_HEAD = len(MAGIC) + KEY_ID_BYTES


async def key_usage(conn: asyncpg.Connection) -> dict[str, dict[str | None, int]]:
    """Rows per table by the id of the key that sealed them (None: stored before sealing)."""
    usage: dict[str, dict[str | None, int]] = {}
    for table in SEALED_TABLES:
        rows = await conn.fetch(
            f"""
            SELECT CASE WHEN substring(body FROM 1 FOR {len(MAGIC)}) = $1
                        THEN encode(substring(body FROM {len(MAGIC) + 1} FOR {KEY_ID_BYTES}), 'hex')
                   END AS key_id,
                   count(*) AS n
            FROM {table} GROUP BY 1
            """,
            MAGIC,
        )
        usage[table] = {r["key_id"]: r["n"] for r in rows}
    return usage


@dataclass
class ResealReport:
    """What a reseal did to one table."""

    table: str
    resealed: int = 0  # sealed under the current key now (from a previous key, or from plain)
    from_plain: int = 0  # of those, rows stored before sealing existed
    batches: int = 0  # committed transactions
    unreadable: list[int] = field(default_factory=list)  # ids left as they were (SealError)


# Called after each committed batch: the table's report so far.
BatchDone = Callable[[ResealReport], None]


async def reseal(
    conn: asyncpg.Connection,
    sealer: Sealer,
    *,
    batch_rows: int = 500,
    batch_bytes: int = 16 * 1024 * 1024,
    on_batch: BatchDone | None = None,
) -> list[ResealReport]:
    """Seal every stored body that is not under `sealer`'s current key with it, table by table.

    Each batch (at most `batch_rows` rows and, past its first row, `batch_bytes` of bodies) is read
    with its rows locked, resealed and committed on its own, so an interrupted run keeps what it
    committed and a second run (or one running beside it) takes up only what is left. A body no
    key held can open is left exactly as it was and its id reported.
    """
    if batch_rows < 1 or batch_bytes < 1:
        raise ValueError("batch_rows and batch_bytes must be positive")
    reports: list[ResealReport] = []
    for table in SEALED_TABLES:
        report = ResealReport(table)
        after = 0
        while True:
            last = await _reseal_batch(conn, sealer, table, after, batch_rows, batch_bytes, report)
            if last is None:
                break
            after = last
            report.batches += 1
            if on_batch is not None:
                on_batch(report)
        reports.append(report)
    return reports


async def _reseal_batch(
    conn: asyncpg.Connection,
    sealer: Sealer,
    table: str,
    after: int,
    batch_rows: int,
    batch_bytes: int,
    report: ResealReport,
) -> int | None:
    """Reseal the next batch after id `after` in one transaction: its last id, None when none is left."""
    async with conn.transaction():
        # Locked, so a reseal running beside this one waits, then finds the rows current and skips them.
        candidates = await conn.fetch(
            f"""
            SELECT id, octet_length(body) AS size FROM {table}
            WHERE id > $1 AND substring(body FROM 1 FOR {_HEAD}) IS DISTINCT FROM $2
            ORDER BY id LIMIT $3
            FOR UPDATE
            """,
            after,
            sealer.head,
            batch_rows,
        )
        if not candidates:
            return None
        ids: list[int] = []
        total = 0
        for row in candidates:
            if ids and total + row["size"] > batch_bytes:
                break
            ids.append(row["id"])
            total += row["size"]
        rows = await conn.fetch(f"SELECT id, body FROM {table} WHERE id = ANY($1::bigint[]) ORDER BY id", ids)
        changed_ids: list[int] = []
        changed_bodies: list[bytes] = []
        for row in rows:
            stored = bytes(row["body"])
            try:
                body = sealer.open(stored)
            except SealError:
                report.unreadable.append(row["id"])
                continue
            changed_ids.append(row["id"])
            changed_bodies.append(sealer.seal(body))
            report.from_plain += not stored.startswith(MAGIC)
        await conn.execute(
            f"UPDATE {table} AS t SET body = u.body "
            "FROM unnest($1::bigint[], $2::bytea[]) AS u(id, body) WHERE t.id = u.id",
            changed_ids,
            changed_bodies,
        )
        report.resealed += len(changed_ids)
        return int(ids[-1])
