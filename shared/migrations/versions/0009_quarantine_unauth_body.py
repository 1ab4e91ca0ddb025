"""The quarantine keeps a bounded part of a request that failed authentication, with its full
length and SHA-256

Anyone who can reach the port can send unauthenticated requests; keeping each whole body (up to the
request limit) would let them fill PostgreSQL. The first 4 KiB is evidence enough, and the length and
digest tell what was sent. `body_truncated` marks the rows whose body is not all that was received.

Revision ID: 0009_quarantine_unauth_body
Revises: 0008_escalation_rule_track
Create Date: 2026-11-26 22:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_quarantine_unauth_body"
down_revision: str | None = "0008_escalation_rule_track"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("body_length", sa.BigInteger(), nullable=True))
    op.add_column("quarantine", sa.Column("body_sha256", sa.LargeBinary(), nullable=True))
    op.add_column(
        "quarantine",
        sa.Column("body_truncated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    for column in ("body_truncated", "body_sha256", "body_length"):
        op.drop_column("quarantine", column)
