"""Escalation rules: a validated YAML configuration and their evaluation over live metrics.

Pure domain, no I/O beyond reading the rules file at start-up. A rule holds for a scope when every
one of its conditions holds; hysteresis (a separate `clear` threshold) keeps it from chattering at
the boundary, a minimum duration keeps a blip from raising anything, and flap suppression keeps a
rule that keeps changing its mind from resolving and re-raising over and over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.auth import Tier


class EscalationRulesError(ValueError):
    """The rules file is missing or invalid; the message names the file and the field."""


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


NEXT_TIER: dict[Tier, Tier | None] = {Tier.ward: Tier.site, Tier.site: Tier.system, Tier.system: None}


class Condition(BaseModel):
    """`metric op value`; once it holds it keeps holding until the value crosses `clear`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field(min_length=1)
    op: Literal[">=", "<="]
    value: float
    clear: float | None = Field(
        default=None, description="hysteresis: the condition clears only beyond this value"
    )

    @model_validator(mode="after")
    def _clear_on_the_far_side(self) -> Condition:
        if self.clear is None:
            return self
        if self.op == ">=" and self.clear >= self.value:
            raise ValueError(f"clear ({self.clear}) must be below value ({self.value}) for op '>='")
        if self.op == "<=" and self.clear <= self.value:
            raise ValueError(f"clear ({self.clear}) must be above value ({self.value}) for op '<='")
        return self

    def raises_value(self, v: float | None) -> bool:
        """Holds at this value; a missing value (no data yet) never holds."""
        return v is not None and self.raises(v)

    def clears_value(self, v: float | None) -> bool:
        """Cleared at this value; a missing value clears nothing."""
        return v is not None and self.clears(v)

    def raises(self, v: float) -> bool:
        return v >= self.value if self.op == ">=" else v <= self.value

    def clears(self, v: float) -> bool:
        if self.clear is None:
            return not self.raises(v)
        return v <= self.clear if self.op == ">=" else v >= self.clear


class Flapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    changes: int = Field(default=4, ge=2, description="this many raise/clear changes …")
    window_minutes: float = Field(default=60, gt=0, description="… within this window is flapping")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(min_length=1)
    tier: Literal[Tier.ward, Tier.site]
    severity: Severity = Severity.medium
    all: tuple[Condition, ...] = Field(min_length=1, description="every condition must hold")
    for_minutes: float = Field(default=0, ge=0, description="minimum duration before raising")
    flapping: Flapping | None = None


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ward: float = Field(gt=0)
    site: float = Field(gt=0)
    system: float = Field(gt=0)

    def of(self, tier: Tier) -> timedelta:
        return timedelta(seconds=float(getattr(self, tier.value)))


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1)
    ack_timeout_seconds: Timeouts
    resolve_timeout_seconds: Timeouts | None = Field(
        default=None, description="acknowledged but not resolved in time: promoted too"
    )
    reminder_seconds: float | None = Field(default=None, gt=0)
    rules: tuple[Rule, ...]

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} appears twice")
            seen.add(rule.id)
        return self

    def check_metrics(self, ward_metrics: set[str], site_metrics: set[str]) -> None:
        """Every condition names a metric its tier knows; raise naming the rule otherwise."""
        for index, rule in enumerate(self.rules):
            known = ward_metrics if rule.tier is Tier.ward else site_metrics
            for c_index, condition in enumerate(rule.all):
                if condition.metric not in known:
                    raise EscalationRulesError(
                        f"rules.{index}.all.{c_index}.metric: {condition.metric!r} is not a "
                        f"{rule.tier.value} metric (rule {rule.id!r}; see docs/escalation.md)"
                    )

    @property
    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


def load_rules(path: Path) -> RuleSet:
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EscalationRulesError(f"{path}: cannot read escalation rules: {exc}") from exc
    try:
        return RuleSet.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise EscalationRulesError(f"{path}: {problems}") from exc


# --- evaluation -------------------------------------------------------------------------------------


class Verdict(StrEnum):
    raise_ = "raise"
    holds = "holds"
    clear = "clear"


@dataclass(frozen=True)
class Decision:
    rule: Rule
    scope: str
    verdict: Verdict
    values: dict[str, float | None]
    flapping: bool = False

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.rule.id, self.scope)


def dedup_key(rule_id: str, scope: str) -> str:
    return f"{rule_id}@{scope}"


@dataclass
class RuleTrack:
    """What the evaluator remembers of one rule at one scope."""

    active: bool = False
    holding_since: datetime | None = None
    held_open: bool = False  # cleared while flapping: the escalation stays open until it calms down
    changes: deque[datetime] = field(default_factory=deque)

    def memory(self) -> tuple[bool, datetime | None, bool, tuple[datetime, ...]]:
        """Everything the track remembers; all empty for a track with nothing to remember."""
        return (self.active, self.holding_since, self.held_open, tuple(self.changes))

    @property
    def idle(self) -> bool:
        return not any(self.memory())


class Evaluator:
    """Feeds metric values through the rules; returns what changed for each (rule, scope)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.tracks: dict[str, RuleTrack] = {}
        # keys whose track changed since the caller last took them (`take_changed`), to be stored
        self.changed: set[str] = set()

    def take_changed(self) -> dict[str, RuleTrack]:
        changed, self.changed = self.changed, set()
        return {key: self.tracks[key] for key in changed}

    def restore(self, key: str) -> None:
        """An escalation is open for this key but no track was stored (kept from before tracks were
        stored): the rule is active."""
        self.tracks.setdefault(key, RuleTrack()).active = True
        self.changed.add(key)

    def evaluate(self, tier: Tier, scope: str, values: dict[str, Any], now: datetime) -> list[Decision]:
        decisions: list[Decision] = []
        for rule in self.rules.rules:
            if rule.tier is not tier:
                continue
            decision = self._one(rule, scope, values, now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _one(self, rule: Rule, scope: str, values: dict[str, Any], now: datetime) -> Decision | None:
        key = dedup_key(rule.id, scope)
        track = self.tracks.setdefault(key, RuleTrack())
        before = track.memory()
        decision = self._decide(rule, scope, track, values, now)
        if track.memory() != before:
            self.changed.add(key)
        return decision

    def _decide(
        self, rule: Rule, scope: str, track: RuleTrack, values: dict[str, Any], now: datetime
    ) -> Decision | None:
        seen = {c.metric: _number(values.get(c.metric)) for c in rule.all}
        if track.active:
            # clears when any condition has crossed its clear threshold (a missing value clears nothing)
            cleared = any(c.clears_value(seen[c.metric]) for c in rule.all)
            if not cleared:
                return Decision(rule, scope, Verdict.holds, seen, self._flapping(rule, track, now))
            track.active = False
            track.holding_since = None
            self._changed(rule, track, now)
            flapping = self._flapping(rule, track, now)
            track.held_open = flapping
            return Decision(rule, scope, Verdict.clear, seen, flapping)
        holds = all(c.raises_value(seen[c.metric]) for c in rule.all)
        if not holds:
            track.holding_since = None
            if track.held_open and not self._flapping(rule, track, now):
                track.held_open = False
                return Decision(rule, scope, Verdict.clear, seen, False)
            return None
        if track.holding_since is None:
            track.holding_since = now
        if now - track.holding_since < timedelta(minutes=rule.for_minutes):
            return None
        track.active = True
        track.held_open = False
        self._changed(rule, track, now)
        return Decision(rule, scope, Verdict.raise_, seen, self._flapping(rule, track, now))

    def _changed(self, rule: Rule, track: RuleTrack, now: datetime) -> None:
        track.changes.append(now)

    def _flapping(self, rule: Rule, track: RuleTrack, now: datetime) -> bool:
        if rule.flapping is None:
            track.changes.clear()
            return False
        window = timedelta(minutes=rule.flapping.window_minutes)
        while track.changes and now - track.changes[0] > window:
            track.changes.popleft()
        return len(track.changes) >= rule.flapping.changes


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None
