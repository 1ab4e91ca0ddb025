"""Resealing stored raw bodies under the current key, on real PostgreSQL: batches, interruption,
rows from before sealing, rows no key opens, and two reseals at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.raw_store_keys import ResealReport, key_usage, reseal
from shared.sealed import Sealer, key_id, new_key
from tests.unit.test_sealed_key_rotation import ADT, FIRST_RELEASE_KEY, FIRST_RELEASE_SEALED

pytestmark = pytest.mark.integration

OLDER = new_key()
CURRENT = new_key()
STRANGER = new_key()  # a key this deployment does not hold


class Interrupted(Exception):
    pass


async def _store(db: asyncpg.Connection, table: str, bodies: list[bytes]) -> list[int]:
    if table == "raw_message":
        sql = (
            "INSERT INTO raw_message (source, endpoint, content_type, body, event_count) "
            "VALUES ('pas', '/v1/pas/hl7v2', 'x-application/hl7-v2+er7', $1, 1) RETURNING id"
        )
    else:
        sql = (
            "INSERT INTO quarantine (source, endpoint, content_type, body, status_code, problem) "
            "VALUES ('pas', '/v1/pas/hl7v2', 'x-application/hl7-v2+er7', $1, 422, '{}') RETURNING id"
        )
    return [await db.fetchval(sql, body) for body in bodies]


async def _stored(db: asyncpg.Connection, table: str) -> dict[int, bytes]:
    return {r["id"]: bytes(r["body"]) for r in await db.fetch(f"SELECT id, body FROM {table} ORDER BY id")}


async def _fill(db: asyncpg.Connection) -> dict[str, dict[int, bytes]]:
    """Each table: bodies from before sealing, from the first release's key, an older key and the
    current one; quarantine also one no held key opens. Returns what each row holds, opened."""
    expected: dict[str, dict[int, bytes]] = {}
    older, current = Sealer(OLDER), Sealer(CURRENT)
    for table in ("raw_message", "quarantine"):
        plain = [b"MSH|plain-%d" % i for i in range(3)]
        by_older = [b"MSH|older-%d" % i for i in range(4)]
        by_current = [b"MSH|current-%d" % i for i in range(2)]
        bodies = [*plain, FIRST_RELEASE_SEALED, *(older.seal(b) for b in by_older)]
        bodies += [current.seal(b) for b in by_current]
        ids = await _store(db, table, bodies)
        expected[table] = dict(zip(ids, [*plain, ADT, *by_older, *by_current], strict=True))
    await _store(db, "quarantine", [Sealer(STRANGER).seal(b"MSH|lost")])
    return expected


def _sealer() -> Sealer:
    return Sealer(CURRENT, [OLDER, FIRST_RELEASE_KEY])


async def test_reseal_in_committed_batches_survives_an_interruption_and_reruns_to_the_end(
    database_url: str, db: asyncpg.Connection
) -> None:
    expected = await _fill(db)
    before = await _stored(db, "raw_message")
    sealer = _sealer()

    def stop_after_first_batch(report: ResealReport) -> None:
        raise Interrupted(report.table)

    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(Interrupted):
            await reseal(conn, sealer, batch_rows=3, on_batch=stop_after_first_batch)
        # the first batch (the three rows from before sealing) is committed; nothing else changed
        after_one = await _stored(db, "raw_message")
        changed = [i for i in before if after_one[i] != before[i]]
        assert changed == sorted(before)[:3]
        assert all(sealer.is_current(after_one[i]) for i in changed)

        batches: list[tuple[str, int]] = []
        reports = await reseal(
            conn, sealer, batch_rows=3, on_batch=lambda r: batches.append((r.table, r.resealed))
        )
    finally:
        await conn.close()

    raw, quarantine = reports
    # raw_message: the first release's body and the older key's four were left, in two batches
    assert (raw.resealed, raw.from_plain, raw.batches, raw.unreadable) == (5, 0, 2, [])
    # quarantine: 3 plain + 1 first release + 4 older in three batches; the stranger's row is left
    assert (quarantine.resealed, quarantine.from_plain, quarantine.batches) == (8, 3, 3)
    lost_id = max(await _stored(db, "quarantine"))
    assert quarantine.unreadable == [lost_id]
    assert batches == [
        ("raw_message", 3),
        ("raw_message", 5),
        ("quarantine", 3),
        ("quarantine", 6),
        ("quarantine", 8),
    ]

    for table, bodies in expected.items():
        stored = await _stored(db, table)
        for row_id, body in bodies.items():
            assert sealer.is_current(stored[row_id]) and sealer.open(stored[row_id]) == body
    usage = await key_usage(db)
    assert usage == {
        "raw_message": {key_id(CURRENT): 10},
        "quarantine": {key_id(CURRENT): 10, key_id(STRANGER): 1},
    }
    # the row no key opens is kept exactly as it was
    assert Sealer(STRANGER).open((await _stored(db, "quarantine"))[lost_id]) == b"MSH|lost"

    # run again: nothing left to do but the row no key opens
    again = await asyncpg.connect(database_url)
    try:
        second = await reseal(again, sealer, batch_rows=3)
    finally:
        await again.close()
    assert [(r.resealed, r.unreadable) for r in second] == [(0, []), (0, [lost_id])]


async def test_key_usage_counts_rows_by_the_key_that_sealed_them(db: asyncpg.Connection) -> None:
    await _fill(db)
    usage = await key_usage(db)
    assert usage["raw_message"] == {
        None: 3,
        key_id(FIRST_RELEASE_KEY): 1,
        key_id(OLDER): 4,
        key_id(CURRENT): 2,
    }
    assert usage["quarantine"] == {**usage["raw_message"], key_id(STRANGER): 1}


async def test_a_batch_holds_at_most_its_bytes_past_its_first_row(
    database_url: str, db: asyncpg.Connection
) -> None:
    big = [b"x" * 5000 for _ in range(4)]
    await _store(db, "raw_message", [Sealer(OLDER).seal(b) for b in big])
    conn = await asyncpg.connect(database_url)
    try:
        raw, quarantine = await reseal(conn, _sealer(), batch_rows=100, batch_bytes=12_000)
    finally:
        await conn.close()
    assert (raw.resealed, raw.batches) == (4, 2)  # two ~5 KB rows fit in 12 KB, three do not
    assert (quarantine.resealed, quarantine.batches) == (0, 0)


async def test_two_reseals_at_once_reseal_each_row_once(database_url: str, db: asyncpg.Connection) -> None:
    expected = await _fill(db)
    sealer = _sealer()
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        reports = await asyncio.gather(
            reseal(first, sealer, batch_rows=2), reseal(second, sealer, batch_rows=2)
        )
    finally:
        await first.close()
        await second.close()
    for index, table in enumerate(("raw_message", "quarantine")):
        assert sum(run[index].resealed for run in reports) == len(expected[table]) - 2  # 2 were current
        stored = await _stored(db, table)
        assert all(sealer.open(stored[i]) == body for i, body in expected[table].items())
