"""The database schema (SQLModel tables). Alembic migrations under shared/migrations create them.

Hot paths use asyncpg directly for batched statements; these classes are the single description
of the schema that migrations are written against.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel


def _ts(**kw: Any) -> Any:
    return Field(
        sa_column=Column(DateTime(timezone=True), server_default=text("now()"), nullable=False, **kw)
    )


class RawMessage(SQLModel, table=True):
    """Every accepted inbound message, byte for byte, with how many events it produced."""

    __tablename__ = "raw_message"
    __table_args__ = (Index("ix_raw_message_received_at", "received_at"),)  # the retention purge (0010)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    source: str
    endpoint: str
    content_type: str
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    event_count: int
    received_at: datetime = _ts()


class Quarantine(SQLModel, table=True):
    """Rejected inbound messages, kept raw with the problem that was answered."""

    __tablename__ = "quarantine"
    __table_args__ = (
        # one open row per refusal: a re-send of it counts there (migration 0010)
        Index(
            "ux_quarantine_open_refusal",
            "refusal_key",
            unique=True,
            postgresql_where=text("replayed_at IS NULL"),
        ),
        Index(
            "ix_quarantine_raw_message_id",
            "raw_message_id",
            postgresql_where=text("raw_message_id IS NOT NULL"),
        ),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    source: str | None = None
    endpoint: str
    content_type: str
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    status_code: int
    problem: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    received_at: datetime = _ts()
    # Replay after a fix: every attempt is counted with its outcome; a successful one links what it made.
    replay_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_replay_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    last_replay_outcome: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    replayed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    raw_message_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    event_ids: list[uuid.UUID] | None = Field(default=None, sa_column=Column(ARRAY(Uuid)))
    # A request refused before authentication keeps only its first 4 KiB: its length and digest tell
    # what was sent (migration 0009).
    body_length: int | None = Field(default=None, sa_column=Column(BigInteger))
    body_sha256: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    body_truncated: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    # The same refusal again (source, endpoint, content type, status, reason, body digest: `refusal_key`)
    # counts on its open row: `received_at` is when it was first seen (migration 0010).
    refusal_key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    repeats: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_seen_at: datetime = _ts()


class Outbox(SQLModel, table=True):
    """Events waiting for (or kept after) publication. `id` order is commit order (see outbox.py)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_created_at", "created_at"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    event_id: uuid.UUID = Field(unique=True)
    topic: str
    key: str
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = _ts()


class RelayPosition(SQLModel, table=True):
    __tablename__ = "relay_position"
    name: str = Field(primary_key=True)
    last_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    broker_incarnation: str
    updated_at: datetime = _ts()


class ConsumerOffset(SQLModel, table=True):
    """A consumer group's position, written in the same transaction as what it applied."""

    __tablename__ = "consumer_offset"
    __table_args__ = (PrimaryKeyConstraint("group_id", "topic", "partition"),)
    group_id: str
    topic: str
    partition: int
    next_offset: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Highest outbox id applied from this partition: replays and broker resets skip anything at or below it.
    outbox_hw: int = Field(sa_column=Column(BigInteger, nullable=False))
    broker_incarnation: str
    updated_at: datetime = _ts()


class WardState(SQLModel, table=True):
    __tablename__ = "ward_state"
    __table_args__ = (Index("ix_ward_state_site", "site_id"),)
    ward_id: str = Field(primary_key=True)
    site_id: str
    system_id: str
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    summary: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    updated_at: datetime = _ts()


class SiteEvent(SQLModel, table=True):
    """Every event command-centre applied, by site: the source for as-of state and rebuilds."""

    __tablename__ = "site_event"
    __table_args__ = (
        Index("ix_site_event_site_id", "site_id", "id"),
        Index("ix_site_event_occurred", "site_id", "occurred_at"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    event_id: uuid.UUID  # not unique: see migration 0007
    site_id: str
    event_type: str
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    recorded_at: datetime = _ts()
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SiteSnapshot(SQLModel, table=True):
    """A site's live state after `last_event_id`: rebuilds start here and apply only the tail."""

    __tablename__ = "site_snapshot"
    site_id: str = Field(primary_key=True)
    last_event_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    format: int
    state: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    taken_at: datetime = _ts()


class ScopeState(SQLModel, table=True):
    """The latest published summary of a site or a system (scope = `site:ID` / `system:ID`)."""

    __tablename__ = "scope_state"
    scope: str = Field(primary_key=True)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    summary: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    updated_at: datetime = _ts()


class MetricPoint(SQLModel, table=True):
    """History: a metric's value from `at`, written on change and at most once a minute per series."""

    __tablename__ = "metric_point"
    __table_args__ = (PrimaryKeyConstraint("scope", "metric", "at"),)
    scope: str
    metric: str
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    value: float | None = None


class DeclaredOpel(SQLModel, table=True):
    """A human-approved OPEL level, kept beside (never over) the computed one."""

    __tablename__ = "declared_opel"
    __table_args__ = (Index("ix_declared_opel_scope", "scope", "declared_at"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    scope: str
    level: int
    reason: str
    declared_by: str
    declared_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    withdrawn_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    withdrawn_by: str | None = None


class Escalation(SQLModel, table=True):
    """An escalation as it stands; `promote_at` is the persisted deadline the timer acts on."""

    __tablename__ = "escalation"
    __table_args__ = (
        Index(
            "ux_escalation_active_dedup",
            "dedup_key",
            unique=True,
            postgresql_where=text("status IN ('open', 'acknowledged')"),
        ),
        Index("ix_escalation_site_status", "site_id", "status"),
        Index("ix_escalation_promote_at", "promote_at", postgresql_where=text("promote_at IS NOT NULL")),
        # the recently closed ones the gateway loads at start-up (migration 0011)
        Index(
            "ix_escalation_closed_updated_at",
            "updated_at",
            postgresql_where=text("status NOT IN ('open', 'acknowledged')"),
        ),
    )
    id: uuid.UUID = Field(sa_column=Column(Uuid, primary_key=True))
    dedup_key: str
    rule: str | None = None
    tier: str
    scope: str
    origin_scope: str
    site_id: str
    severity: str
    reason: str
    values: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    status: str
    owner: str | None = None
    links: list[str] = Field(sa_column=Column(JSONB, nullable=False))
    promote_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    snoozed_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    remind_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    flapping: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    version: int
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EscalationTimeline(SQLModel, table=True):
    """Every change of an escalation: who, when, what (the exportable audit trail)."""

    __tablename__ = "escalation_timeline"
    __table_args__ = (Index("ix_escalation_timeline_escalation", "escalation_id", "id"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    escalation_id: uuid.UUID = Field(sa_column=Column(Uuid, ForeignKey("escalation.id"), nullable=False))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str
    action: str
    tier: str
    detail: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))


class EscalationRuleTrack(SQLModel, table=True):
    """What the rule evaluator remembers of one rule at one scope (escalation_policy.RuleTrack), so a
    restart or a rebalance keeps a minimum-duration wait and flap detection; idle tracks have no row."""

    __tablename__ = "escalation_rule_track"
    __table_args__ = (Index("ix_escalation_rule_track_site", "site_id"),)
    dedup_key: str = Field(primary_key=True)
    site_id: str
    active: bool
    holding_since: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    held_open: bool
    changes: list[datetime] = Field(sa_column=Column(ARRAY(DateTime(timezone=True)), nullable=False))
    updated_at: datetime = _ts()


class EscalationDelivery(SQLModel, table=True):
    """An escalation change queued for an outbound notifier, with every attempt logged."""

    __tablename__ = "escalation_delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "notifier"),
        Index(
            "ix_escalation_delivery_due",
            "notifier",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    event_id: uuid.UUID = Field(sa_column=Column(Uuid, nullable=False))
    notifier: str
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    status: str = Field(default="pending", sa_column=Column(String, nullable=False, server_default="pending"))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime = _ts()
    last_status: int | None = None
    last_error: str | None = None
    log: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False, server_default="[]"))
    created_at: datetime = _ts()
    delivered_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class FhirEncounterState(SQLModel, table=True):
    """What ingest last knew of a FHIR Encounter, to tell an admission from a transfer.

    `encounter_key` is pseudonymised (source + logical id); `location` is a canonical `Location`.
    """

    __tablename__ = "fhir_encounter_state"
    encounter_key: str = Field(primary_key=True)
    site_id: str
    encounter_class: str
    status: str
    location: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    version_id: str
    updated_at: datetime = _ts()


class FhirEncounterVersion(SQLModel, table=True):
    """Every Encounter version processed, with the events it produced: a re-post gets the same answer."""

    __tablename__ = "fhir_encounter_version"
    __table_args__ = (
        PrimaryKeyConstraint("encounter_key", "version_id"),
        Index("ix_fhir_encounter_version_created_at", "created_at"),
    )
    encounter_key: str
    version_id: str
    outcome: str
    event_ids: list[uuid.UUID] = Field(sa_column=Column(ARRAY(Uuid), nullable=False))
    created_at: datetime = _ts()


class Hl7Message(SQLModel, table=True):
    """HL7 v2 idempotency: each message taken (sender, MSH-10, content) and the ACK it was given.

    A re-sent message is answered with the stored ACK and writes nothing; a different message under
    a control id already used is processed (some senders reuse ids) and counted.
    """

    __tablename__ = "hl7_message"
    __table_args__ = (
        PrimaryKeyConstraint("source", "control_id", "content_sha256"),
        Index("ix_hl7_message_received_at", "received_at"),
    )
    source: str
    control_id: str
    content_sha256: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    trigger: str
    event_count: int
    ack: str
    received_at: datetime = _ts()


class UnmappedLocation(SQLModel, table=True):
    """Source location codes that are not in the location mapping, counted per kind and code.

    `kind` says what is missing: a facility, a ward (point of care) of a known site, or a bed of a
    known ward. `site_id` is '' when the site could not be told either.
    """

    __tablename__ = "unmapped_location"
    __table_args__ = (PrimaryKeyConstraint("source", "site_id", "kind", "code"),)
    source: str
    site_id: str
    kind: str
    code: str
    example: str
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    first_seen: datetime = _ts()
    last_seen: datetime = _ts()


class IngestCounter(SQLModel, table=True):
    """Named counters per source (e.g. HL7 control ids reused, sites taken from the sending facility)."""

    __tablename__ = "ingest_counter"
    __table_args__ = (PrimaryKeyConstraint("source", "name"),)
    source: str
    name: str
    value: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = _ts()


class FeedSubscription(SQLModel, table=True):
    """An ICB's push subscription: where to POST the pressure feed, how it is signed, and how often."""

    __tablename__ = "feed_subscription"
    id: uuid.UUID = Field(sa_column=Column(Uuid, primary_key=True))
    system_id: str
    url: str
    secret: str
    # {"sites": [...], "min_effective_level": N}: which sites the payload carries, and a level gate
    filters: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    cadence: str  # "on_change" or "interval"
    interval_minutes: int | None = None
    created_by: str
    created_at: datetime = _ts()
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # what was last queued for delivery: the scope versions it carried, and when
    last_versions: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    last_queued_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # one feeds replica works on a subscription at a time
    lease_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class FeedDelivery(SQLModel, table=True):
    """One message to one subscriber, with every attempt made to deliver it (the delivery log)."""

    __tablename__ = "feed_delivery"
    __table_args__ = (
        Index("ix_feed_delivery_subscription", "subscription_id", "created_at"),
        Index("ix_feed_delivery_due", "status", "next_attempt_at"),
    )
    id: uuid.UUID = Field(sa_column=Column(Uuid, primary_key=True))
    subscription_id: uuid.UUID = Field(sa_column=Column(Uuid, nullable=False))
    status: str  # pending, delivered, dead
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    attempt_log: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _ts()
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
