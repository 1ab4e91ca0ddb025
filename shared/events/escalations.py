"""Escalation lifecycle events (topic icc.escalations.v1, keyed by site id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.events.base import Payload


class EscalationChanged(Payload):
    """An escalation after a change: its whole summary and the timeline entry that changed it."""

    event_type: Literal["escalation.changed"] = "escalation.changed"
    escalation: dict[str, Any] = Field(description="id, tier, scope, status, severity, values, … version")
    change: dict[str, Any] = Field(description="at, actor, action, tier, detail")
