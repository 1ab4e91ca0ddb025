"""An index for the escalations closed recently, which the gateway loads at start-up

The gateway seeds its live state with the open escalations and those closed in the last hour. The
open ones come from the partial index `ux_escalation_active_dedup`; the closed ones were found by
reading the whole table, which only grows. This partial index holds the closed escalations by
`updated_at` (their last change: closing, or a note added since), and leaves out the open ones,
whose frequent updates (acknowledgement, promotion, reminders) so do not touch it.

PostgreSQL uses a partial index only for a condition that states its predicate, so the query asks
`status IN ('open', 'acknowledged') OR (status NOT IN ('open', 'acknowledged') AND updated_at > $1)`:
a bitmap OR of the two partial indexes, reading only the rows it returns.

Revision ID: 0011_escalation_updated_at
Revises: 0010_quarantine_retention
Create Date: 2026-11-27 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_escalation_updated_at"
down_revision: str | None = "0010_quarantine_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_escalation_closed_updated_at",
        "escalation",
        ["updated_at"],
        postgresql_where=sa.text("status NOT IN ('open', 'acknowledged')"),
    )


def downgrade() -> None:
    op.drop_index("ix_escalation_closed_updated_at", table_name="escalation")
