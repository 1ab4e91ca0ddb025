"""Escalation rules and lifecycle with a controllable clock: hysteresis, minimum duration,
flapping, dedup, snooze, promotion, and rules files that fail with the field named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from services.command_centre.escalation_policy import (
    EscalationRulesError,
    Evaluator,
    RuleSet,
    Severity,
    Verdict,
    load_rules,
)
from services.command_centre.escalations import Escalation, Status, TransitionError, may_act
from shared.auth import Role, Tier
from shared.organisation import Organisation

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def rules(**overrides: object) -> RuleSet:
    raw: dict[str, object] = {
        "version": "test",
        "ack_timeout_seconds": {"ward": 600, "site": 1200, "system": 1800},
        "resolve_timeout_seconds": {"ward": 3600, "site": 3600, "system": 3600},
        "reminder_seconds": 120,
        "rules": [
            {
                "id": "no-beds",
                "description": "no beds",
                "tier": "ward",
                "severity": "high",
                "all": [{"metric": "available", "op": "<=", "value": 0, "clear": 2}],
                "for_minutes": 15,
                "flapping": {"changes": 4, "window_minutes": 60},
            }
        ],
    }
    raw.update(overrides)
    return RuleSet.model_validate(raw)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_default_rules_load_and_name_known_metrics() -> None:
    from services.command_centre.escalation_engine import SITE_RULE_METRICS, WARD_RULE_METRICS

    ruleset = load_rules(ROOT / "deploy" / "escalation" / "default-rules.yaml")
    ruleset.check_metrics(WARD_RULE_METRICS, SITE_RULE_METRICS)
    assert {r.id for r in ruleset.rules} >= {"ward-no-beds-admissions-waiting", "site-opel-3"}


def test_invalid_rules_name_the_field(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "escalation" / "default-rules.yaml").read_text())
    raw["rules"][0]["all"][0]["clear"] = -1  # on the wrong side of the threshold
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(EscalationRulesError, match=r"rules\.0\.all\.0.*clear"):
        load_rules(path)
    raw = yaml.safe_load((ROOT / "deploy" / "escalation" / "default-rules.yaml").read_text())
    del raw["ack_timeout_seconds"]["site"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(EscalationRulesError, match=r"ack_timeout_seconds\.site"):
        load_rules(path)


def on_ward_metric(metric: str) -> RuleSet:
    """Rules of one ward rule with one condition, on `metric`."""
    condition = {"metric": metric, "op": "<=", "value": 0}
    return rules(rules=[{"id": "x", "description": "x", "tier": "ward", "all": [condition]}])


def test_unknown_metric_is_refused() -> None:
    bad = on_ward_metric("beds_free_typo")
    with pytest.raises(EscalationRulesError, match=r"rules\.0\.all\.0\.metric.*beds_free_typo"):
        bad.check_metrics({"available"}, set())


def test_a_rule_can_name_only_a_numeric_metric() -> None:
    # formerly: a rule on `last_bed_event_at` (a time) was accepted, and could never hold
    from services.command_centre.escalation_engine import SITE_RULE_METRICS, WARD_RULE_METRICS

    assert {"available", "pending_admissions", "ncr_patients"} <= WARD_RULE_METRICS
    assert {"ward_id", "counts", "last_bed_event_at"}.isdisjoint(WARD_RULE_METRICS)
    assert {"wards_without_bed_data", "ed_over_12h_now", "opel_level"} <= SITE_RULE_METRICS
    assert {"as_of", "ed_time_in_department"}.isdisjoint(SITE_RULE_METRICS)
    with pytest.raises(EscalationRulesError, match=r"rules\.0\.all\.0\.metric.*last_bed_event_at"):
        on_ward_metric("last_bed_event_at").check_metrics(WARD_RULE_METRICS, SITE_RULE_METRICS)


def test_only_tracks_that_changed_are_handed_over_for_storing() -> None:
    """The evaluation runs on every batch of every site: a steady condition must write nothing."""
    ev = Evaluator(rules())
    ev.evaluate(Tier.ward, "ward:W", {"available": 3}, at(0))
    assert ev.take_changed() == {}
    ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(1))
    changed = ev.take_changed()
    assert list(changed) == ["no-beds@ward:W"] and changed["no-beds@ward:W"].holding_since == at(1)
    ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(2))  # still holding since at(1)
    assert ev.take_changed() == {}
    ev.evaluate(Tier.ward, "ward:W", {"available": 2}, at(3))
    assert changed == ev.take_changed() and changed["no-beds@ward:W"].idle


def test_minimum_duration_before_raising() -> None:
    ev = Evaluator(rules())
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(0)) == []
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(14)) == []
    # a blip back to one bed restarts the clock
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 1}, at(14.5)) == []
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(15)) == []
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(29)) == []
    [decision] = ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(30))
    assert decision.verdict is Verdict.raise_
    assert decision.values == {"available": 0.0}
    assert decision.dedup_key == "no-beds@ward:W"


def test_hysteresis_clears_only_beyond_the_clear_value() -> None:
    ev = Evaluator(rules())
    ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(0))
    [raised] = ev.evaluate(Tier.ward, "ward:W", {"available": 0}, at(15))
    assert raised.verdict is Verdict.raise_
    # one bed free: no longer at the threshold, but not past the clear value either
    [still] = ev.evaluate(Tier.ward, "ward:W", {"available": 1}, at(16))
    assert still.verdict is Verdict.holds
    [cleared] = ev.evaluate(Tier.ward, "ward:W", {"available": 2}, at(17))
    assert cleared.verdict is Verdict.clear
    assert not cleared.flapping


def test_flapping_keeps_the_escalation_open_until_it_calms_down() -> None:
    ruleset = rules()
    rule = ruleset.rules[0].model_copy(update={"for_minutes": 0})
    ev = Evaluator(ruleset.model_copy(update={"rules": (rule,)}))
    verdicts = []
    for minute in range(0, 8):
        value = 0 if minute % 2 == 0 else 3
        verdicts.extend(
            (d.verdict, d.flapping)
            for d in ev.evaluate(Tier.ward, "ward:W", {"available": value}, at(minute))
        )
    # raise, clear, raise, clear(flapping) …: the fourth change is flapping
    assert verdicts[:3] == [(Verdict.raise_, False), (Verdict.clear, False), (Verdict.raise_, False)]
    assert verdicts[3] == (Verdict.clear, True)
    # quiet for an hour: the held-open escalation may now clear
    assert ev.evaluate(Tier.ward, "ward:W", {"available": 3}, at(30)) == []
    [late] = ev.evaluate(Tier.ward, "ward:W", {"available": 3}, at(70))
    assert (late.verdict, late.flapping) == (Verdict.clear, False)


def raise_one(ruleset: RuleSet, now: datetime = T0) -> Escalation:
    return Escalation.raise_new(
        rules=ruleset,
        dedup_key="no-beds@ward:RXN01-CCU",
        rule="no-beds",
        tier=Tier.ward,
        scope="ward:RXN01-CCU",
        site_id="RXN01",
        severity=Severity.high,
        reason="no beds",
        values={"available": 0},
        actor="icc",
        now=now,
    )


def test_dedup_updates_the_open_escalation(org: Organisation) -> None:
    esc = raise_one(rules())
    assert esc.refresh({"available": 0}, at(1)) is False
    assert esc.refresh({"available": -1}, at(2)) is True
    assert esc.values == {"available": -1}
    assert [e.action for e in esc.timeline] == ["raised"]


def test_promotion_ward_to_site_to_system(org: Organisation) -> None:
    ruleset = rules()
    esc = raise_one(ruleset)
    assert esc.promote_at == at(10)
    assert not esc.promote(ruleset, org, at(9))
    assert esc.promote(ruleset, org, at(10))
    assert (esc.tier, esc.scope, esc.status) == (Tier.site, "site:RXN01", Status.open)
    assert esc.promote_at == at(30)
    assert not esc.promote(ruleset, org, at(10))  # the new deadline is in the future: once only
    assert esc.promote(ruleset, org, at(30))
    assert (esc.tier, esc.scope) == (Tier.system, "system:QXN")
    assert esc.promote(ruleset, org, at(60))  # overdue at the top: recorded once, timer stops
    assert esc.promote_at is None
    assert not esc.promote(ruleset, org, at(600))
    actions = [e.action for e in esc.timeline]
    assert actions == ["raised", "promoted", "promoted", "overdue_at_top"]
    assert esc.timeline[1].detail["from_scope"] == "ward:RXN01-CCU"


def test_acknowledged_escalation_promotes_if_not_resolved(org: Organisation) -> None:
    ruleset = rules()
    esc = raise_one(ruleset)
    esc.acknowledge(ruleset, "nurse", at(5))
    assert esc.owner == "nurse"
    assert esc.promote_at == at(65)
    assert not esc.promote(ruleset, org, at(30))
    assert esc.promote(ruleset, org, at(65))
    assert esc.status is Status.open  # the next tier has to acknowledge it again
    esc.acknowledge(ruleset, "site-manager", at(66))
    with pytest.raises(TransitionError):
        esc.acknowledge(ruleset, "site-manager", at(67))


def test_snooze_defers_promotion_and_reminders(org: Organisation) -> None:
    ruleset = rules()
    esc = raise_one(ruleset)
    assert esc.remind_at == at(2)
    esc.snooze("nurse", at(40), at(1))
    assert esc.promote_at == at(40)
    assert not esc.remind(ruleset, at(3))
    assert not esc.promote(ruleset, org, at(39))
    assert esc.promote(ruleset, org, at(40))
    with pytest.raises(TransitionError):
        esc.snooze("nurse", at(39), at(41))


def test_resolve_and_auto_resolve_end_the_timers(org: Organisation) -> None:
    ruleset = rules()
    esc = raise_one(ruleset)
    esc.annotate("nurse", "calling bed bureau", at(1))
    esc.assign("nurse", "bed-manager", at(2))
    esc.resolve("bed-manager", at(3))
    assert esc.promote_at is None and not esc.promote(ruleset, org, at(100))
    with pytest.raises(TransitionError):
        esc.resolve("x", at(4))
    other = raise_one(ruleset)
    other.auto_resolve({"available": 2}, at(5))
    assert other.status is Status.auto_resolved
    assert [e.action for e in esc.timeline] == ["raised", "note", "assigned", "resolved"]


def test_reminders_repeat_while_unacknowledged() -> None:
    ruleset = rules()
    esc = raise_one(ruleset)
    assert not esc.remind(ruleset, at(1))
    assert esc.remind(ruleset, at(2))
    assert esc.remind_at == at(4)
    esc.acknowledge(ruleset, "n", at(3))
    assert not esc.remind(ruleset, at(10))


def test_who_may_act() -> None:
    assert may_act(Role.ward_nurse, Tier.ward) and not may_act(Role.ward_nurse, Tier.site)
    assert may_act(Role.site_manager, Tier.site) and not may_act(Role.site_manager, Tier.system)
    assert not may_act(Role.wall_display, Tier.ward)
    assert may_act(Role.admin, Tier.system)
    assert may_act(Role.system_coordinator, Tier.system) and not may_act(Role.system_coordinator, Tier.site)


def test_command_centre_refuses_to_start_with_bad_rules(tmp_path: Path, org: Organisation) -> None:
    from services.command_centre.app import create_app
    from shared.runtime import Runtime
    from shared.secrets_store import generate
    from shared.settings import Settings

    raw = yaml.safe_load((ROOT / "deploy" / "escalation" / "default-rules.yaml").read_text())
    raw["rules"][0]["all"][0]["metric"] = "beds_free"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = Settings(
        ICC_ESCALATION_RULES=path, ICC_OPEL_PROFILE=ROOT / "deploy" / "opel" / "default-profile.yaml"
    )
    runtime = Runtime(settings, org, generate(), "postgresql://unused", "unused:9092")
    with pytest.raises(EscalationRulesError, match=r"rules\.yaml: rules\.0\.all\.0\.metric: 'beds_free'"):
        create_app(runtime)
