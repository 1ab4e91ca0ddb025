"""The pressure view of a site or a system, built from the published summaries. Pure functions.

A summary is what the command centre writes to `scope_state`: `version`, `as_of`, `metrics`
(docs/metrics.md names) and `opel` (`computed` with its breakdown, `declared`, `effective_level`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.organisation import Organisation

TIERS = ("ward", "site", "system")


@dataclass(frozen=True)
class ScopeSnapshot:
    """The latest published summary of one scope (None: the scope has not reported yet)."""

    scope: str
    version: int
    summary: Mapping[str, Any] | None


@dataclass(frozen=True)
class Escalations:
    """Open escalations by tier; `available` is False where no escalation store exists yet."""

    open_by_tier: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    available: bool = False


def _metric(metrics: Mapping[str, Any] | None, name: str) -> Any:
    return metrics.get(name) if metrics else None


def _opel(opel: Mapping[str, Any] | None) -> dict[str, Any]:
    if not opel:
        return {"computed_level": None, "score_pct": None, "declared": None, "effective_level": None}
    computed = opel.get("computed") or {}
    view: dict[str, Any] = {
        "computed_level": computed.get("level"),
        "score_pct": computed.get("score_pct"),
        "profile": {"id": computed.get("profile_id"), "version": computed.get("profile_version")},
        "declared": opel.get("declared"),
        "effective_level": opel.get("effective_level"),
    }
    if "breakdown" in computed:  # a site: the parameter breakdown
        view["breakdown"] = computed["breakdown"]
        view["missing"] = computed.get("missing", [])
    if "sites" in computed:  # a system: each site's contribution
        view["site_contributions"] = computed["sites"]
        view["excluded_sites"] = computed.get("excluded", [])
    return view


def pressure_of(snapshot: ScopeSnapshot) -> dict[str, Any]:
    """One scope's figures, grouped the way an ICB reads them."""
    summary = snapshot.summary or {}
    m = summary.get("metrics")
    return {
        "scope": snapshot.scope,
        "version": snapshot.version,
        "as_of": summary.get("as_of"),
        "reported": snapshot.summary is not None,
        "opel": _opel(summary.get("opel")),
        "beds": {
            "total": _metric(m, "beds_total"),
            "open": _metric(m, "beds_open"),
            "occupied": _metric(m, "beds_occupied"),
            "available": _metric(m, "beds_available"),
            "closed": _metric(m, "beds_closed"),
            "escalation_beds_open": _metric(m, "escalation_beds_open"),
            "escalation_beds_pct_of_open": _metric(m, "escalation_beds_pct_of_open"),
            "general_and_acute": {
                "open": _metric(m, "ga_beds_open"),
                "occupied": _metric(m, "ga_beds_occupied"),
                "occupancy_pct": _metric(m, "ga_occupancy_pct"),
            },
            "critical_care": {
                "open": _metric(m, "cc_beds_open"),
                "occupied": _metric(m, "cc_beds_occupied"),
                "occupancy_pct": _metric(m, "cc_occupancy_pct"),
            },
        },
        "no_criteria_to_reside": {
            "patients": _metric(m, "ncr_patients"),
            "pct_of_occupied": _metric(m, "ncr_pct_of_occupied"),
        },
        "ed": {
            "in_department": _metric(m, "ed_in_department"),
            "dta_waiting": _metric(m, "ed_dta_waiting"),
            "longest_dta_wait_minutes": _metric(m, "ed_longest_dta_wait_minutes"),
            "over_12h_now": _metric(m, "ed_over_12h_now"),
            "four_hour_performance_pct": _metric(m, "ed_4h_performance_pct"),
            "attendance_variation_pct": _metric(m, "ed_attendance_variation_pct"),
            "median_time_to_treatment_minutes": _metric(m, "ed_median_time_to_treatment_minutes"),
            "majors_resus_occupancy_pct": _metric(m, "ed_majors_resus_occupancy_pct"),
            "arrivals_since_midnight": _metric(m, "ed_arrivals_since_midnight"),
        },
        "handover": {
            "ambulance_queue": _metric(m, "ambulance_queue"),
            "longest_wait_minutes": _metric(m, "ambulance_longest_wait_minutes"),
            "mean_minutes": _metric(m, "mean_handover_minutes"),
            "since_midnight": _metric(m, "handovers_since_midnight"),
            "over_30_minutes": _metric(m, "handovers_over_30"),
            "over_60_minutes": _metric(m, "handovers_over_60"),
            "hours_lost": _metric(m, "handover_hours_lost"),
        },
    }


def _escalations_view(escalations: Escalations) -> dict[str, Any]:
    return {"open_by_tier": dict(escalations.open_by_tier), "source_available": escalations.available}


def site_pressure(
    org: Organisation, snapshot: ScopeSnapshot, escalations: Escalations | None = None
) -> dict[str, Any]:
    site_id = snapshot.scope.partition(":")[2]
    site = org.sites_by_id[site_id]
    return {
        "site_id": site_id,
        "name": site.name,
        "system_id": org.system.id,
        **pressure_of(snapshot),
        "escalations": _escalations_view(escalations or Escalations()),
    }


def system_pressure(
    org: Organisation,
    system: ScopeSnapshot,
    sites: Mapping[str, ScopeSnapshot],
    escalations: Mapping[str, Escalations] | None = None,
) -> dict[str, Any]:
    """The system with each of its sites (`sites` keyed by site id; only those listed are shown)."""
    escalations = escalations or {}
    site_views = [
        site_pressure(org, snapshot, escalations.get(site_id)) for site_id, snapshot in sites.items()
    ]
    totals = dict.fromkeys(TIERS, 0)
    available = bool(escalations) and all(e.available for e in escalations.values())
    for e in escalations.values():
        for tier, count in e.open_by_tier.items():
            totals[tier] = totals.get(tier, 0) + count
    return {
        "system_id": org.system.id,
        "name": org.system.name,
        **pressure_of(system),
        "escalations": _escalations_view(Escalations(totals, available)),
        "sites": site_views,
    }


def etag(representation: str, snapshots: list[ScopeSnapshot], extra: str = "") -> str:
    """A weak validator: the same scope versions (and escalation counts) give the same tag."""
    key = representation + "|" + "|".join(f"{s.scope}={s.version}" for s in snapshots) + "|" + extra
    return 'W/"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
