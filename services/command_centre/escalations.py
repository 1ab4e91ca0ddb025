"""The escalation lifecycle: open → acknowledged → resolved (or auto-resolved), promotion, snooze.

Pure domain. Every transition appends a timeline entry (who, when, what) — the audit trail an
incident review exports — and moves the one persisted deadline, `promote_at`, that the timer acts on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from services.command_centre.escalation_policy import NEXT_TIER, RuleSet, Severity
from shared.auth import Role, Scope, Tier
from shared.organisation import Organisation

SYSTEM_ACTOR = "icc"


class Status(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"
    auto_resolved = "auto_resolved"


ACTIVE = frozenset({Status.open, Status.acknowledged})


class TransitionError(ValueError):
    """The action does not apply to the escalation as it stands (answered 409)."""


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    actor: str
    action: str
    tier: Tier
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Escalation:
    id: uuid.UUID
    dedup_key: str
    rule: str | None  # None: raised by a person
    tier: Tier
    scope: str
    site_id: str
    severity: Severity
    reason: str
    values: dict[str, Any]
    status: Status
    created_at: datetime
    updated_at: datetime
    origin_scope: str = ""
    owner: str | None = None
    links: list[str] = field(default_factory=list)
    promote_at: datetime | None = None
    snoozed_until: datetime | None = None
    remind_at: datetime | None = None
    flapping: bool = False
    version: int = 0
    timeline: list[TimelineEntry] = field(default_factory=list)
    new_entries: list[TimelineEntry] = field(default_factory=list)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def raise_new(
        cls,
        *,
        rules: RuleSet,
        dedup_key: str,
        rule: str | None,
        tier: Tier,
        scope: str,
        site_id: str,
        severity: Severity,
        reason: str,
        values: dict[str, Any],
        actor: str,
        now: datetime,
        links: list[str] | None = None,
    ) -> Escalation:
        esc = cls(
            id=uuid.uuid4(),
            dedup_key=dedup_key,
            rule=rule,
            tier=tier,
            scope=scope,
            origin_scope=scope,
            site_id=site_id,
            severity=severity,
            reason=reason,
            values=dict(values),
            status=Status.open,
            created_at=now,
            updated_at=now,
            links=list(links or []),
            promote_at=now + rules.ack_timeout_seconds.of(tier),
        )
        esc._record(now, actor, "raised", reason=reason, values=values, severity=severity.value)
        esc._plan_reminder(rules, now)
        return esc

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def _record(self, now: datetime, actor: str, action: str, **detail: Any) -> None:
        entry = TimelineEntry(now, actor, action, self.tier, detail)
        self.timeline.append(entry)
        self.new_entries.append(entry)
        self.updated_at = now

    def _need_active(self, action: str) -> None:
        if not self.active:
            raise TransitionError(f"cannot {action} an escalation that is {self.status.value}")

    def _plan_reminder(self, rules: RuleSet, now: datetime) -> None:
        self.remind_at = (
            now + timedelta(seconds=rules.reminder_seconds)
            if rules.reminder_seconds and self.status is Status.open
            else None
        )

    # ---- what the rules do ----------------------------------------------------------------------
    def refresh(self, values: dict[str, Any], now: datetime, *, flapping: bool = False) -> bool:
        """The rule still holds (or raised again): update the figures; dedup never opens a second."""
        changed = False
        if values != self.values:
            self.values = dict(values)
            self.updated_at = now
            changed = True
        if flapping != self.flapping:
            self.flapping = flapping
            self._record(now, SYSTEM_ACTOR, "flapping" if flapping else "steady", values=values)
            changed = True
        return changed

    def auto_resolve(self, values: dict[str, Any], now: datetime) -> None:
        self._need_active("auto-resolve")
        self.status = Status.auto_resolved
        self.values = dict(values)
        self.promote_at = None
        self.remind_at = None
        self._record(now, SYSTEM_ACTOR, "auto_resolved", values=values)

    # ---- what people do -------------------------------------------------------------------------
    def acknowledge(self, rules: RuleSet, actor: str, now: datetime) -> None:
        if self.status is not Status.open:
            raise TransitionError(f"cannot acknowledge an escalation that is {self.status.value}")
        self.status = Status.acknowledged
        self.owner = self.owner or actor
        timeout = rules.resolve_timeout_seconds
        self.promote_at = now + timeout.of(self.tier) if timeout is not None else None
        self.remind_at = None
        self._record(now, actor, "acknowledged")

    def resolve(self, actor: str, now: datetime, note: str | None = None) -> None:
        self._need_active("resolve")
        self.status = Status.resolved
        self.promote_at = None
        self.remind_at = None
        self._record(now, actor, "resolved", **({"note": note} if note else {}))

    def annotate(self, actor: str, text: str, now: datetime) -> None:
        self._record(now, actor, "note", text=text)

    def assign(self, actor: str, owner: str, now: datetime) -> None:
        self._need_active("reassign")
        previous, self.owner = self.owner, owner
        self._record(now, actor, "assigned", owner=owner, previous=previous)

    def snooze(self, actor: str, until: datetime, now: datetime) -> None:
        """Quiet until `until`: no reminder and no promotion before then."""
        self._need_active("snooze")
        if until <= now:
            raise TransitionError("a snooze must end in the future")
        self.snoozed_until = until
        if self.promote_at is not None and self.promote_at < until:
            self.promote_at = until
        self.remind_at = None
        self._record(now, actor, "snoozed", until=until.isoformat())

    # ---- what the clock does --------------------------------------------------------------------
    def due(self, now: datetime) -> bool:
        return self.active and self.promote_at is not None and self.promote_at <= now

    def promote(self, rules: RuleSet, org: Organisation, now: datetime) -> bool:
        """Its deadline passed: move it one tier up (ward → site → system). False at the top."""
        if not self.due(now):
            return False
        upper = NEXT_TIER[self.tier]
        reason = "not acknowledged in time" if self.status is Status.open else "not resolved in time"
        if upper is None:
            self.promote_at = None  # nowhere higher to go: record it once and stop the timer
            self._record(now, SYSTEM_ACTOR, "overdue_at_top", reason=reason)
            return True
        previous = self.scope
        self.tier = upper
        self.scope = str(scope_above(Scope.parse(previous), org))
        self.status = Status.open
        self.snoozed_until = None
        self.promote_at = now + rules.ack_timeout_seconds.of(upper)
        self._record(now, SYSTEM_ACTOR, "promoted", reason=reason, from_scope=previous, to_scope=self.scope)
        self._plan_reminder(rules, now)
        return True

    def remind(self, rules: RuleSet, now: datetime) -> bool:
        if not self.active or self.remind_at is None or self.remind_at > now:
            return False
        if self.snoozed_until is not None and self.snoozed_until > now:
            return False
        self._record(now, SYSTEM_ACTOR, "reminder")
        self._plan_reminder(rules, now)
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "dedup_key": self.dedup_key,
            "rule": self.rule,
            "tier": self.tier.value,
            "scope": self.scope,
            "origin_scope": self.origin_scope,
            "site_id": self.site_id,
            "severity": self.severity.value,
            "reason": self.reason,
            "values": self.values,
            "status": self.status.value,
            "owner": self.owner,
            "links": self.links,
            "promote_at": self.promote_at.isoformat() if self.promote_at else None,
            "snoozed_until": self.snoozed_until.isoformat() if self.snoozed_until else None,
            "flapping": self.flapping,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def scope_above(scope: Scope, org: Organisation) -> Scope:
    if scope.tier is Tier.ward:
        return Scope(Tier.site, org.wards[scope.id].site_id)
    return Scope(Tier.system, org.system.id)


# ---- who may act ----------------------------------------------------------------------------------

ACTORS: dict[Role, frozenset[Tier]] = {
    Role.ward_nurse: frozenset({Tier.ward}),
    Role.site_manager: frozenset({Tier.ward, Tier.site}),
    Role.icb_analyst: frozenset(),
    # the ICB's system coordination centre: the system tier is what it answers for
    Role.system_coordinator: frozenset({Tier.system}),
    Role.wall_display: frozenset(),
    Role.admin: frozenset({Tier.ward, Tier.site, Tier.system}),
}


def may_act(role: Role, tier: Tier) -> bool:
    """Whether a role may raise or act on escalations of a tier (its scope is checked separately)."""
    return tier in ACTORS.get(role, frozenset())
