"""A re-sent refusal counts on its open quarantine row; raw messages and quarantine rows are purged

Senders (MLLP engines especially) send a refused message again and again. Each open row now has a
`refusal_key` (SHA-256 over source, endpoint, content type, status, the problem's machine-readable
part and the body's SHA-256), unique among open rows, so the same refusal lands on the same row with
`repeats` and `last_seen_at`; rows kept before this have none and are left as they are.

Retention: `raw_message` is purged by `received_at` (an index, so a purge batch reads only old rows),
but never a raw message a quarantine row links to (an index on the link).

Revision ID: 0010_quarantine_retention
Revises: 0009_quarantine_unauth_body
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_quarantine_retention"
down_revision: str | None = "0009_quarantine_unauth_body"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("refusal_key", sa.LargeBinary(), nullable=True))
    op.add_column("quarantine", sa.Column("repeats", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "quarantine",
        sa.Column(
            "last_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
    )
    op.execute("UPDATE quarantine SET last_seen_at = received_at")
    op.create_index(
        "ux_quarantine_open_refusal",
        "quarantine",
        ["refusal_key"],
        unique=True,
        postgresql_where=sa.text("replayed_at IS NULL"),
    )
    op.create_index(
        "ix_quarantine_raw_message_id",
        "quarantine",
        ["raw_message_id"],
        postgresql_where=sa.text("raw_message_id IS NOT NULL"),
    )
    op.create_index("ix_raw_message_received_at", "raw_message", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_raw_message_received_at", table_name="raw_message")
    op.drop_index("ix_quarantine_raw_message_id", table_name="quarantine")
    op.drop_index("ux_quarantine_open_refusal", table_name="quarantine")
    for column in ("last_seen_at", "repeats", "refusal_key"):
        op.drop_column("quarantine", column)
