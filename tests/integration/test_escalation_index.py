"""The escalations the gateway loads at start-up (`SEED_ESCALATIONS`: the open ones and those closed
in the last hour) are read through indexes rather than by scanning every escalation ever raised
(migration 0011), and the table model in shared/tables.py declares the index the migration creates."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from services.gateway.state_feed import SEED_ESCALATIONS
from shared.tables import Escalation

pytestmark = pytest.mark.integration

CLOSED_INDEX = "ix_escalation_closed_updated_at"


async def test_open_and_recently_closed_escalations_are_read_through_the_partial_indexes(
    db: asyncpg.Connection,
) -> None:
    # an empty table would be scanned whatever the indexes: ask whether an index *can* answer
    await db.execute("SET enable_seqscan = off")
    plan = "\n".join(row[0] for row in await db.fetch("EXPLAIN " + SEED_ESCALATIONS, datetime.now(UTC)))

    assert "Seq Scan" not in plan, plan
    assert CLOSED_INDEX in plan and "ux_escalation_active_dedup" in plan, plan


async def test_the_table_model_declares_the_index_the_migration_creates(db: asyncpg.Connection) -> None:
    created = await db.fetchval(
        "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
        CLOSED_INDEX,
    )
    declared = {index.name: index for index in Escalation.__table__.indexes}  # type: ignore[attr-defined]

    assert created is not None and "open" in created and "acknowledged" in created
    index = declared[CLOSED_INDEX]
    assert [column.name for column in index.columns] == ["updated_at"]
    assert str(index.dialect_options["postgresql"]["where"]) == "status NOT IN ('open', 'acknowledged')"
