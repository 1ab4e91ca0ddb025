"""State published by command-centre (topic icc.state.v1, compacted, one key per entity)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from shared.events.base import Payload
from shared.events.beds import BedStatus


class WardBedCounts(Payload):
    occupied: int = 0
    unoccupied: int = 0
    closed: int = 0
    housekeeping: int = 0
    isolated: int = 0
    contaminated: int = 0


class WardStateChanged(Payload):
    """A ward's full bed picture after a change; `version` grows by one per change of that ward."""

    event_type: Literal["ward.state_changed"] = "ward.state_changed"
    system_id: str
    ward_id: str
    version: int
    beds_total: int
    available: int
    counts: WardBedCounts
    beds: dict[str, BedStatus]
    as_of: AwareDatetime
    metrics: dict[str, Any] | None = Field(default=None, description="census and today's flows")


class ScopeStateChanged(Payload):
    """A site's or a system's metrics and OPEL (computed with its breakdown, declared, effective)."""

    event_type: Literal["scope.state_changed"] = "scope.state_changed"
    scope: str = Field(description="site:ID or system:ID")
    system_id: str
    version: int
    metrics: dict[str, Any]
    opel: dict[str, Any]
    as_of: AwareDatetime
