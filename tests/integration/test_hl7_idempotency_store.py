"""The HL7 group-commit step on real PostgreSQL: re-sends, reused control ids, unmapped counts, pruning."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from services.ingest.group_commit import GroupCommitWriter
from services.ingest.hl7_intake import Hl7Bookkeeping, Hl7Intake, prune_idempotency
from services.ingest.location_source import LocationMapSource
from shared.db import create_pool
from shared.organisation import load_organisation
from shared.sealed import Sealer, new_key
from tests.hl7_samples import adt, pid, pv1

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_bookkeeping_in_one_transaction_with_the_events(
    database_url: str, db: asyncpg.Connection
) -> None:
    pool = await create_pool(database_url)
    org = load_organisation(ROOT / "deploy/org/sample-icb.yaml")
    writer = GroupCommitWriter(pool, sealer=Sealer(new_key()), steps=[Hl7Bookkeeping()])
    task = asyncio.create_task(writer.run())
    intake = Hl7Intake(writer, pool, LocationMapSource(org, None), secrets.token_urlsafe(40))
    try:
        same = adt("A01", "IDEM1").encode()
        other = adt("A01", "IDEM1", pid(), pv1("WD99^B1^1^RXN01")).encode()
        # all four arrive together, so they share one batch: duplicates inside a batch are caught too
        replies = await asyncio.gather(
            *(
                intake.receive(b, source="pas", endpoint="/t", content_type="t")
                for b in (same, same, other, same)
            )
        )
        assert [r.outcomes[0].duplicate for r in replies] == [False, True, False, True]
        assert replies[0].ack == replies[1].ack == replies[3].ack != replies[2].ack
        assert await db.fetchval("SELECT count(*) FROM outbox") == 2
        assert await db.fetchval("SELECT count(*) FROM hl7_message") == 2
        counters = dict(await db.fetch("SELECT name, value FROM ingest_counter WHERE source = 'pas'"))
        assert counters["hl7.accepted"] == 2 and counters["hl7.duplicate"] == 2
        assert counters["hl7.control_id_reused"] == 1 and counters["hl7.unmapped_location"] == 1
        row = await db.fetchrow("SELECT site_id, kind, code, count, example FROM unmapped_location")
        assert tuple(row) == ("RXN01", "ward", "WD99", 1, "WD99^B1^1^RXN01")

        await db.execute(
            "UPDATE hl7_message SET received_at = now() - interval '40 days' WHERE control_id = 'IDEM1'"
        )
        assert await prune_idempotency(pool, timedelta(days=30)) == 2
        again = await intake.receive(same, source="pas", endpoint="/t", content_type="t")
        assert again.outcomes[0].duplicate is False  # forgotten, so processed again…
        assert await db.fetchval("SELECT count(*) FROM outbox") == 2  # …but its events are the same ids
    finally:
        task.cancel()
        await pool.close()
