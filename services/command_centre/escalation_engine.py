"""Runs the escalation rules and timers for the sites this replica owns.

Called from the state projection right after a site's metrics are computed, inside the same
transaction: a raised, refreshed, auto-resolved or promoted escalation commits atomically with the
state that caused it. The owner of a site's partition therefore owns that site's timers too. The
rules' evaluation state (how long a condition has held, its recent changes) is stored in that
transaction as well, so a restart or a rebalance neither restarts a minimum-duration wait nor
forgets flapping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

import asyncpg
from pydantic import BaseModel

from services.command_centre import escalation_store as store
from services.command_centre.escalation_policy import Decision, Evaluator, RuleSet, Verdict
from services.command_centre.escalations import SYSTEM_ACTOR, Escalation
from services.command_centre.metrics import SiteMetrics, WardMetrics
from shared.auth import Tier
from shared.organisation import Organisation


def numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields a condition can compare: numbers (None while there is no data), not names, times
    (a ward's `last_bed_event_at`) or tables, which a rule could name but never see hold."""
    return frozenset(
        name
        for name, field in model.model_fields.items()
        if (kinds := set(get_args(field.annotation) or (field.annotation,)) - {type(None)})
        and kinds <= {int, float}
    )


WARD_RULE_METRICS = numeric_fields(WardMetrics)
SITE_RULE_METRICS = numeric_fields(SiteMetrics) | {"opel_level", "ward_escalations_open"}


class EscalationEngine:
    def __init__(self, rules: RuleSet, org: Organisation, *, notifiers: tuple[str, ...] = ()) -> None:
        rules.check_metrics(set(WARD_RULE_METRICS), set(SITE_RULE_METRICS))
        self.rules = rules
        self.org = org
        self.evaluator = Evaluator(rules)
        self.conflicts = 0
        self.notifiers = notifiers
        self.loaded: set[str] = set()  # sites whose stored rule tracks are in the evaluator

    def forget(self) -> None:
        """Memory may be ahead of the database (a rolled-back batch) or about sites now owned by
        another replica: drop it, and read the stored tracks again when a site is next evaluated."""
        self.evaluator.tracks.clear()
        self.evaluator.changed.clear()
        self.loaded.clear()

    async def evaluate_site(
        self,
        conn: asyncpg.Connection,
        site_id: str,
        wards: dict[str, dict[str, Any]],
        site: dict[str, Any],
        now: datetime,
    ) -> None:
        if site_id not in self.loaded:  # after a start, a restart or a rebalance
            self.evaluator.tracks.update(await store.load_tracks(conn, site_id))
            self.loaded.add(site_id)
        active = {e.dedup_key: e for e in await store.active_for_site(conn, site_id)}
        for esc in active.values():
            if esc.rule is not None and esc.dedup_key not in self.evaluator.tracks:
                self.evaluator.restore(esc.dedup_key)
        for ward_id, values in wards.items():
            for decision in self.evaluator.evaluate(Tier.ward, f"ward:{ward_id}", values, now):
                await self._apply(conn, decision, active, site_id, now)
        from_wards = [e for e in active.values() if e.active and e.origin_scope.startswith("ward:")]
        site_values = {**site, "ward_escalations_open": len({e.origin_scope for e in from_wards})}
        links = sorted(str(e.id) for e in from_wards)
        for decision in self.evaluator.evaluate(Tier.site, f"site:{site_id}", site_values, now):
            await self._apply(conn, decision, active, site_id, now, links=links)
        for esc in list(active.values()):
            await self._timers(conn, esc, now)
        # how long each condition has held, and its recent changes, commit with what they caused
        changed = self.evaluator.take_changed()
        if changed:
            await store.save_tracks(conn, site_id, changed)

    async def _apply(
        self,
        conn: asyncpg.Connection,
        decision: Decision,
        active: dict[str, Escalation],
        site_id: str,
        now: datetime,
        links: list[str] | None = None,
    ) -> None:
        esc = active.get(decision.dedup_key)
        if esc is not None and not esc.active:
            esc = None
        if decision.verdict is Verdict.raise_ and esc is None:
            esc = Escalation.raise_new(
                rules=self.rules,
                dedup_key=decision.dedup_key,
                rule=decision.rule.id,
                tier=decision.rule.tier,
                scope=decision.scope,
                site_id=site_id,
                severity=decision.rule.severity,
                reason=decision.rule.description,
                values=decision.values,
                actor=SYSTEM_ACTOR,
                now=now,
                links=links if decision.rule.tier is Tier.site else None,
            )
            await self._save(conn, esc)
            active[esc.dedup_key] = esc
            return
        if esc is None:
            return  # cleared or resolved by a person while the rule still held: nothing to update
        if decision.verdict is Verdict.clear and not decision.flapping:
            esc.auto_resolve(decision.values, now)
            await self._save(conn, esc)
            return
        changed = esc.refresh(decision.values, now, flapping=decision.flapping)
        if links is not None and decision.rule.tier is Tier.site and links != esc.links:
            esc.links = links
            changed = True
        if changed:
            await self._save(conn, esc)

    async def _timers(self, conn: asyncpg.Connection, esc: Escalation, now: datetime) -> None:
        if not esc.active:
            return
        if esc.promote(self.rules, self.org, now):
            await self._save(conn, esc, due_check=True)
        elif esc.remind(self.rules, now):
            await self._save(conn, esc)

    async def _save(self, conn: asyncpg.Connection, esc: Escalation, *, due_check: bool = False) -> None:
        if not await store.save(conn, esc, due_check=due_check, notifiers=self.notifiers):
            self.conflicts += 1  # someone else changed it first; the next evaluation sees theirs
