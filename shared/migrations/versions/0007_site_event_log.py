"""The command centre's event log takes appends by COPY: no unique index on event_id

Events reach the log once (the consumer's stored offsets and outbox ids, in the same transaction),
the outbox already refuses a second event with the same id, and applying an event twice changes
no state; the unique index only cost an index insert per event.

Revision ID: 0007_site_event_log
Revises: 0006_feeds
Create Date: 2026-11-26 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_site_event_log"
down_revision: str | None = "0006_feeds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("site_event_event_id_key", "site_event", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint("site_event_event_id_key", "site_event", ["event_id"])
