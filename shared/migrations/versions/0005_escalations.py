"""escalations with their timeline and persisted deadlines

Revision ID: 0005_escalations
Revises: 0004_state
Create Date: 2026-11-26 10:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_escalations"
down_revision: str | None = "0004_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "escalation",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("origin_scope", sa.String(), nullable=False),
        sa.Column("site_id", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("values", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("links", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("promote_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snoozed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("flapping", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # dedup: one active escalation per rule and scope, enforced by the database too
    op.create_index(
        "ux_escalation_active_dedup",
        "escalation",
        ["dedup_key"],
        unique=True,
        postgresql_where=sa.text("status IN ('open', 'acknowledged')"),
    )
    op.create_index("ix_escalation_site_status", "escalation", ["site_id", "status"])
    op.create_index(
        "ix_escalation_promote_at",
        "escalation",
        ["promote_at"],
        postgresql_where=sa.text("promote_at IS NOT NULL"),
    )
    op.create_table(
        "escalation_timeline",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("escalation_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("tier", sa.String(), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["escalation_id"], ["escalation.id"]),
    )
    op.create_index("ix_escalation_timeline_escalation", "escalation_timeline", ["escalation_id", "id"])
    op.create_table(
        "escalation_delivery",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("notifier", sa.String(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("log", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "notifier"),
    )
    op.create_index(
        "ix_escalation_delivery_due",
        "escalation_delivery",
        ["notifier", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_escalation_delivery_due", table_name="escalation_delivery")
    op.drop_table("escalation_delivery")
    op.drop_index("ix_escalation_timeline_escalation", table_name="escalation_timeline")
    op.drop_table("escalation_timeline")
    op.drop_index("ix_escalation_promote_at", table_name="escalation")
    op.drop_index("ix_escalation_site_status", table_name="escalation")
    op.drop_index("ux_escalation_active_dedup", table_name="escalation")
    op.drop_table("escalation")
