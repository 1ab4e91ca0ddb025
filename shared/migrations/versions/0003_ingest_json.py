"""ingest JSON and FHIR: quarantine replay, FHIR encounter state and processed versions

Revision ID: 0003_ingest_json
Revises: 0001
Create Date: 2026-11-26 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_ingest_json"
down_revision: str | None = "0002_hl7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("replay_count", sa.Integer(), server_default="0", nullable=False))
    op.add_column("quarantine", sa.Column("last_replay_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "quarantine",
        sa.Column("last_replay_outcome", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("quarantine", sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("quarantine", sa.Column("raw_message_id", sa.BigInteger(), nullable=True))
    op.add_column("quarantine", sa.Column("event_ids", postgresql.ARRAY(sa.Uuid()), nullable=True))
    op.create_table(
        "fhir_encounter_state",
        sa.Column("encounter_key", sa.String(), nullable=False),
        sa.Column("site_id", sa.String(), nullable=False),
        sa.Column("encounter_class", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("location", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("version_id", sa.String(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("encounter_key"),
    )
    op.create_table(
        "fhir_encounter_version",
        sa.Column("encounter_key", sa.String(), nullable=False),
        sa.Column("version_id", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("event_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("encounter_key", "version_id"),
    )
    op.create_index(
        "ix_fhir_encounter_version_created_at", "fhir_encounter_version", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_fhir_encounter_version_created_at", table_name="fhir_encounter_version")
    op.drop_table("fhir_encounter_version")
    op.drop_table("fhir_encounter_state")
    for column in ("event_ids", "raw_message_id", "replayed_at", "last_replay_outcome", "last_replay_at"):
        op.drop_column("quarantine", column)
    op.drop_column("quarantine", "replay_count")
