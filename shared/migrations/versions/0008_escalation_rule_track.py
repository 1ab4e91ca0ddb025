"""Escalation rules' evaluation state is stored: a restart or a rebalance keeps how long a condition
has held (the minimum duration) and the recent changes (flap detection)

Written in the transaction that evaluated the rules, beside the state and escalations that caused
it. A track with nothing to remember has no row.

Revision ID: 0008_escalation_rule_track
Revises: 0007_site_event_log
Create Date: 2026-11-26 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_escalation_rule_track"
down_revision: str | None = "0007_site_event_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "escalation_rule_track",
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("site_id", sa.String(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("holding_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("held_open", sa.Boolean(), nullable=False),
        sa.Column("changes", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("dedup_key"),
    )
    op.create_index("ix_escalation_rule_track_site", "escalation_rule_track", ["site_id"])


def downgrade() -> None:
    op.drop_index("ix_escalation_rule_track_site", table_name="escalation_rule_track")
    op.drop_table("escalation_rule_track")
