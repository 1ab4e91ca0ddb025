"""What the command centre's REST answers look like, for the OpenAPI document (`/openapi.json`, `/docs`).

The endpoints build their answers as plain dicts from the stored summaries, so a summary is served
exactly as it was published. These models only describe those dicts: a route names one in
`responses=` and returns `Documented`, so nothing is filtered, validated or re-serialised.

Each model reuses the one it shows (`WardMetrics`, `SiteMetrics`, the `ward.state_changed` payload,
the OPEL results and declarations) rather than copying its fields. Where a view carries a field of
that model elsewhere (a ward's `beds_total` beside its `metrics`, a site's `as_of` beside its), the
subclass marks it `Absent` or widens it: a pydantic field override that mypy reads as an
incompatible assignment, hence the `type: ignore[assignment]` on those lines. Unknown keys are
refused, so validating a real answer against its model (tests/e2e/test_command_centre_openapi.py)
fails when the answer gains a field the documentation lacks.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from services.command_centre.as_of import Basis
from services.command_centre.escalation_policy import Severity
from services.command_centre.escalations import Status
from services.command_centre.metrics import SiteMetrics, WardMetrics
from services.command_centre.projection import SET_ASIDE_REASONS
from shared.auth import Tier
from shared.events import BedStatus, WardStateChanged
from shared.opel import DeclaredLevel, OpelResult, SystemOpelResult
from shared.organisation import WardType

Documented = Annotated[dict[str, Any], WithJsonSchema({})]
"""The return type of a route whose body a `responses=` model describes: sent as the plain dict it
is, and with no schema of its own to blur that model's in the OpenAPI document."""

Absent = SkipJsonSchema[None]
"""A field of the reused model that this view carries elsewhere: not in the schema, never set."""


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- wards ------------------------------------------------------------------------------------------


class WardFigures(WardMetrics):
    """A live ward's `metrics`: its census and today's flows (the bed figures are at its top level)."""

    model_config = ConfigDict(extra="forbid")
    ward_id: Absent = None  # type: ignore[assignment]
    beds_total: Absent = None  # type: ignore[assignment]
    counts: Absent = None  # type: ignore[assignment]
    available: Absent = None  # type: ignore[assignment]


class WardState(WardStateChanged):
    """A ward's latest `ward.state_changed` summary with its name, type and specialty. A ward that has
    never reported shows its bed base, every bed unoccupied, with version 0 and `as_of` null."""

    name: str
    type: WardType
    specialty: str
    as_of: AwareDatetime | None  # type: ignore[assignment]
    metrics: WardFigures | None = Field(default=None, description="census and today's flows")  # type: ignore[assignment]


class AsOfWard(WardMetrics):
    """A ward rebuilt as of a past time: every figure at top level, beside each bed's status."""

    model_config = ConfigDict(extra="forbid")
    beds: dict[str, BedStatus]


# --- sites and the system ---------------------------------------------------------------------------


class ScopeMetrics(SiteMetrics):
    """A site's or the system's `metrics` (docs/metrics.md); their `as_of` is published beside them."""

    model_config = ConfigDict(extra="forbid")
    as_of: Absent = None  # type: ignore[assignment]


class LevelChange(_View):
    from_level: int | None = Field(
        description="the effective level before the change (null: insufficient data)"
    )
    at: AwareDatetime = Field(description="when the command centre computed the new level")


class OpelLevels(_View):
    computed: OpelResult | SystemOpelResult = Field(
        description="a site's score with its parameter breakdown, or the system's with its sites'"
    )
    declared: DeclaredLevel | None = Field(description="the human declaration in force, if any")
    effective_level: int | None = Field(
        description="the declared level while in force, else the computed one (null: insufficient data)"
    )
    change: LevelChange | None = Field(
        description="the effective level's last change: the trend screens show (null: none yet)"
    )


class SiteOpel(OpelLevels):
    computed: OpelResult


class SystemOpel(OpelLevels):
    computed: SystemOpelResult


class OpelView(OpelLevels):
    """GET /v1/{sites|systems}/{id}/opel."""

    scope: str = Field(description="site:ID or system:ID")
    as_of: AwareDatetime


class LiveSiteState(_View):
    """GET /v1/sites/{id}/state: the site's latest summary and every ward's. Before the site's first
    summary, `version` is 0 and `as_of`, `metrics` and `opel` are null."""

    site_id: str
    name: str
    scope: str = Field(description="site:ID")
    version: int
    as_of: AwareDatetime | None
    metrics: ScopeMetrics | None
    opel: SiteOpel | None
    wards: list[WardState]


class AsOfSiteState(_View):
    """GET /v1/sites/{id}/state?as_of=…: the site rebuilt from its stored events at that time."""

    site_id: str
    name: str
    scope: str = Field(description="site:ID")
    as_of: AwareDatetime
    basis: Basis = Field(description="shown: as displayed then; known: as known now")
    events_applied: int
    metrics: ScopeMetrics
    opel: SiteOpel
    wards: list[AsOfWard]


class SiteSummary(_View):
    """One site of the system: its latest metrics and OPEL (null before its first summary)."""

    site_id: str
    name: str
    metrics: ScopeMetrics | None
    opel: SiteOpel | None


class SystemState(_View):
    """GET /v1/systems/{id}/state: the system folded from its sites, and each site's summary. Before
    the system's first summary, `version` is 0 and `as_of`, `metrics` and `opel` are null."""

    system_id: str
    name: str
    scope: str = Field(description="system:ID")
    version: int
    as_of: AwareDatetime | None
    metrics: ScopeMetrics | None
    opel: SystemOpel | None
    sites: list[SiteSummary]


class Declaration(DeclaredLevel):
    """POST /v1/{sites|systems}/{id}/opel/declared: the declaration as stored."""

    id: int
    scope: str


class Withdrawn(_View):
    withdrawn: list[int] = Field(description="ids of the declarations withdrawn")


# --- history and the consumer -----------------------------------------------------------------------


class HistoryPoint(_View):
    at: AwareDatetime
    value: float | None = Field(description="held until the next point; a null level: insufficient data")


class History(_View):
    """GET /v1/{sites|systems}/{id}/history: the value in force at `from`, then every change to `to`."""

    scope: str
    metric: str
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    points: list[HistoryPoint]


class ConsumerStatus(_View):
    """GET /v1/consumer: this replica's consumer."""

    running: bool
    applied: int
    set_aside: dict[str, int] = Field(
        description=f"events not applied, by reason: {', '.join(SET_ASIDE_REASONS)}"
    )
    skipped_duplicates: int
    dead_lettered: int
    broker_resets: int
    partitions: list[str] = Field(description="topic:partition assigned to this replica")
    owned_sites: list[str]


# --- escalations ------------------------------------------------------------------------------------


class EscalationSummary(_View):
    id: uuid.UUID
    dedup_key: str
    rule: str | None = Field(description="the rule that raised it; null: raised by a person")
    tier: Tier
    scope: str
    origin_scope: str = Field(description="where it was raised, before any promotion")
    site_id: str
    severity: Severity
    reason: str
    values: dict[str, Any] = Field(description="the metric values that triggered the rule")
    status: Status
    owner: str | None
    links: list[str]
    promote_at: AwareDatetime | None
    snoozed_until: AwareDatetime | None
    flapping: bool
    version: int
    created_at: AwareDatetime
    updated_at: AwareDatetime


class EscalationTimelineEntry(_View):
    at: AwareDatetime
    actor: str
    action: str
    tier: Tier
    detail: dict[str, Any]


class EscalationDetail(EscalationSummary):
    """One escalation with its timeline (what every action on it answers)."""

    timeline: list[EscalationTimelineEntry]


class EscalationList(_View):
    escalations: list[EscalationSummary]
