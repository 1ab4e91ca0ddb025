"""Metrics of a ward, a site and a system, computed from live state at a moment. Pure functions.

docs/metrics.md defines each one exactly; the names here are the names there. Every ratio keeps its
numerator and denominator, so a system's figures are recomputed from its sites' sums, never
averaged from their percentages.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from services.command_centre.london_time import local_date, midnight_before, same_time_last_week
from services.command_centre.site_state import HISTORY, STALE_AFTER, SiteState
from shared.events import BedStatus
from shared.organisation import Ward, WardType

GA_TYPES = frozenset({WardType.general_acute, WardType.assessment, WardType.paediatric})
MAJORS_RESUS_ACUITY = frozenset({1, 2, 3})
HANDOVER_STANDARD = timedelta(minutes=15)
# NHS England's A&E definitions, by time in department (arrival to departure, or to `now`):
FOUR_HOURS = timedelta(hours=4)  # the 4-hour standard is met at 4 h 00 min or less
TWELVE_HOURS = timedelta(hours=12)  # a 12-hour breach is more than 12 h 00 min from arrival
# Each bucket holds the stays above its lower bound up to and including its upper bound (the first
# from 0), so the buckets up to 4 h are exactly the stays within the standard and `over_12h` is
# exactly the patients counted by `ed_over_12h_now`.
TIME_IN_DEPARTMENT_BUCKETS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 12), (12, None))
_BUCKET_LIMITS = tuple(
    (f"{lo}-{hi}h" if hi is not None else f"over_{lo}h", timedelta(hours=hi) if hi is not None else None)
    for lo, hi in TIME_IN_DEPARTMENT_BUCKETS
)


class WardMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)
    ward_id: str
    beds_total: int
    counts: dict[str, int]
    available: int
    core_beds_open: int
    escalation_beds_open: int
    patients: int
    admissions_today: int
    discharges_today: int
    transfers_in_today: int
    transfers_out_today: int
    outliers: int
    ncr_patients: int
    pending_admissions: int
    expected_discharges_today: int
    on_leave: int
    # data quality: None when nothing ever wrote to the ward's beds, which still count as unoccupied
    last_bed_event_at: datetime | None


class SiteMetrics(BaseModel):
    """One site's figures (or a system's, folded from its sites). None: no data to compute it."""

    model_config = ConfigDict(frozen=True)
    as_of: datetime
    # beds
    beds_total: int = 0
    beds_open: int = 0
    beds_occupied: int = 0
    beds_available: int = 0
    beds_closed: int = 0
    escalation_beds_open: int = 0
    ga_beds_open: int = 0
    ga_beds_occupied: int = 0
    ga_occupancy_pct: float | None = None
    cc_beds_open: int = 0
    cc_beds_occupied: int = 0
    cc_occupancy_pct: float | None = None
    escalation_beds_pct_of_open: float | None = None
    ncr_patients: int = 0
    ncr_pct_of_occupied: float | None = None
    admissions_today: int = 0
    discharges_today: int = 0
    wards_without_bed_data: int = 0  # data quality: their beds still count as unoccupied above
    # ED
    ed_in_department: int = 0
    ed_awaiting_assessment: int = 0
    ed_awaiting_treatment: int = 0
    ed_in_treatment: int = 0
    ed_dta_waiting: int = 0
    ed_longest_dta_wait_minutes: float | None = None
    ed_time_in_department: dict[str, int] = {}
    ed_over_12h_now: int = 0
    ed_over_12h_pct: float | None = None
    ed_arrivals_since_midnight: int = 0
    ed_arrivals_same_time_last_week: int = 0
    ed_attendance_variation_pct: float | None = None
    ed_departures_since_midnight: int = 0
    ed_within_4h_since_midnight: int = 0
    ed_4h_performance_pct: float | None = None
    ed_12h_breaches_since_midnight: int = 0
    ed_seen_since_midnight: int = 0
    ed_median_time_to_treatment_minutes: float | None = None
    ed_majors_resus_patients: int = 0
    ed_majors_resus_spaces: int = 0
    ed_majors_resus_occupancy_pct: float | None = None
    ed_stale_attendances: int = 0
    # ambulances
    ambulance_queue: int = 0
    ambulance_longest_wait_minutes: float | None = None
    ambulance_stale_handovers: int = 0
    handovers_since_midnight: int = 0
    handover_minutes_total: float = 0.0
    mean_handover_minutes: float | None = None
    handovers_over_30: int = 0
    handovers_over_60: int = 0
    handover_hours_lost: float = 0.0

    def opel_inputs(self) -> dict[str, float | None]:
        return {
            name: value for name, value in self.model_dump().items() if isinstance(value, float | int | None)
        }


def pct(numerator: float, denominator: float) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def ward_metrics(state: SiteState, ward: Ward, now: datetime) -> WardMetrics:
    return all_ward_metrics(state, now, [ward])[ward.id]


_FLOWS = "patients outliers admissions discharges moved_in moved_out pending expected on_leave".split()


def all_ward_metrics(
    state: SiteState, now: datetime, wards: Iterable[Ward] | None = None
) -> dict[str, WardMetrics]:
    """Every ward's figures in one pass over the site's encounters (not one pass per ward)."""
    chosen = list(wards) if wards is not None else list(state.site.wards)
    by_id = {w.id: w for w in chosen}
    flows = {w.id: dict.fromkeys(_FLOWS, 0) for w in chosen}
    today = local_date(now)
    midnight = midnight_before(now)

    def add(ward_id: str | None, name: str) -> None:
        if ward_id in flows:
            flows[ward_id][name] += 1

    for encounter in state.encounters.values():
        state_name, ward_id = encounter.state, encounter.ward_id
        if state_name == "preadmitted":
            if encounter.pending(now):
                add(encounter.pending_ward, "pending")
        elif state_name == "active" and ward_id in flows:
            add(ward_id, "patients")
            specialty = encounter.detail(encounter.specialty)
            if specialty and specialty.lower() != by_id[ward_id].specialty.lower():
                add(ward_id, "outliers")
            if encounter.detail(encounter.expected_discharge) == today:
                add(ward_id, "expected")
            if encounter.detail(encounter.on_leave):
                add(ward_id, "on_leave")
        elif state_name == "discharged":
            if encounter.since is not None and midnight <= encounter.since <= now:
                add(ward_id, "discharges")
        if state_name != "cancelled":
            for at, admitted_to in encounter.admissions():
                if midnight <= at <= now:
                    add(admitted_to, "admissions")
        for at, from_ward, to_ward in encounter.moves:  # transfers not cancelled (A12)
            if midnight <= at <= now:
                add(to_ward, "moved_in")
                add(from_ward, "moved_out")
    return {w.id: _ward_figures(state, w, flows[w.id], now) for w in chosen}


def _ward_figures(state: SiteState, ward: Ward, flow: dict[str, int], now: datetime) -> WardMetrics:
    counts = {status.value: 0 for status in BedStatus}
    core_open = escalation_open = ncr = 0
    last_written: datetime | None = None
    for bed in ward.bed_list:
        written = state.last_written(bed.id)
        if written is not None and written <= now and (last_written is None or written > last_written):
            last_written = written
        status = state.bed_status(bed.id)
        counts[status.value] += 1
        if status is not BedStatus.closed:
            if bed.escalation:
                escalation_open += 1
            else:
                core_open += 1
        if status is BedStatus.occupied and state.has_ncr(bed.id):
            ncr += 1
    return WardMetrics(
        ward_id=ward.id,
        beds_total=len(ward.bed_list),
        counts=counts,
        available=counts[BedStatus.unoccupied.value],
        core_beds_open=core_open,
        escalation_beds_open=escalation_open,
        patients=flow["patients"],
        admissions_today=flow["admissions"],
        discharges_today=flow["discharges"],
        transfers_in_today=flow["moved_in"],
        transfers_out_today=flow["moved_out"],
        outliers=flow["outliers"],
        ncr_patients=ncr,
        pending_admissions=flow["pending"],
        expected_discharges_today=flow["expected"],
        on_leave=flow["on_leave"],
        last_bed_event_at=last_written,
    )


def site_metrics(state: SiteState, now: datetime, wards: Iterable[WardMetrics] | None = None) -> SiteMetrics:
    ward_list = list(wards) if wards is not None else list(all_ward_metrics(state, now).values())
    by_id = {w.id: w for w in state.site.wards}
    values: dict[str, object] = {"as_of": now}
    totals = dict.fromkeys(("total", "open", "occupied", "available", "closed", "escalation", "ncr"), 0)
    ga_open = ga_occ = cc_open = cc_occ = 0
    for wm in ward_list:
        ward = by_id[wm.ward_id]
        occupied = wm.counts[BedStatus.occupied.value]
        open_beds = wm.beds_total - wm.counts[BedStatus.closed.value]
        totals["total"] += wm.beds_total
        totals["open"] += open_beds
        totals["occupied"] += occupied
        totals["available"] += wm.available
        totals["closed"] += wm.counts[BedStatus.closed.value]
        totals["escalation"] += wm.escalation_beds_open
        totals["ncr"] += wm.ncr_patients
        if ward.type in GA_TYPES:
            ga_open, ga_occ = ga_open + open_beds, ga_occ + occupied
        elif ward.type is WardType.critical_care:
            cc_open, cc_occ = cc_open + open_beds, cc_occ + occupied
    values.update(
        beds_total=totals["total"],
        beds_open=totals["open"],
        beds_occupied=totals["occupied"],
        beds_available=totals["available"],
        beds_closed=totals["closed"],
        escalation_beds_open=totals["escalation"],
        ga_beds_open=ga_open,
        ga_beds_occupied=ga_occ,
        cc_beds_open=cc_open,
        cc_beds_occupied=cc_occ,
        ncr_patients=totals["ncr"],
        admissions_today=sum(w.admissions_today for w in ward_list),
        discharges_today=sum(w.discharges_today for w in ward_list),
        wards_without_bed_data=sum(w.last_bed_event_at is None for w in ward_list),
    )
    values.update(_ed_figures(state, now))
    values.update(_handover_figures(state, now))
    return finish(SiteMetrics.model_validate(values))


def _ed_figures(state: SiteState, now: datetime) -> dict[str, object]:
    midnight = midnight_before(now)
    last_week_end = same_time_last_week(now)
    last_week_start = midnight_before(last_week_end)
    stages = dict.fromkeys(("awaiting_assessment", "awaiting_treatment", "in_treatment", "dta"), 0)
    buckets = dict.fromkeys((name for name, _ in _BUCKET_LIMITS), 0)
    in_department = over_12h = majors_resus = stale = 0
    longest_dta: timedelta | None = None
    arrivals = arrivals_last_week = departures = within_4h = breaches_12h = 0
    treatment_minutes: list[float] = []
    for attendance in state.attendances.values():
        arrived = attendance.at("arrived")
        departed = attendance.at("departed")
        if arrived is None:
            continue
        if midnight <= arrived <= now:
            arrivals += 1
        elif last_week_start <= arrived <= last_week_end:
            arrivals_last_week += 1
        seen = attendance.at("seen")
        if seen is not None and midnight <= seen <= now:
            treatment_minutes.append(max(0.0, _minutes(seen - arrived)))
        if departed is not None and departed <= now:
            if departed >= midnight:
                departures += 1
                stay = departed - arrived
                within_4h += stay <= FOUR_HOURS
                breaches_12h += stay > TWELVE_HOURS
            continue
        if arrived > now:
            continue
        heard = attendance.last_heard(now)
        assert heard is not None  # the arrival, at the earliest
        if now - heard > STALE_AFTER:  # a leftover: counted apart, until a prune may forget it
            stale += now - heard <= HISTORY
            continue
        in_department += 1
        stay = now - arrived
        over_12h += stay > TWELVE_HOURS
        buckets[_bucket_for(stay)] += 1
        acuity = attendance.acuity.value if attendance.acuity else None
        if acuity in MAJORS_RESUS_ACUITY:
            majors_resus += 1
        dta = attendance.at("dta")
        if dta is not None and dta <= now:
            stages["dta"] += 1
            wait = now - dta
            longest_dta = wait if longest_dta is None or wait > longest_dta else longest_dta
        elif seen is not None and seen <= now:
            stages["in_treatment"] += 1
        elif (assessed := attendance.at("assessed")) is not None and assessed <= now:
            stages["awaiting_treatment"] += 1
        else:
            stages["awaiting_assessment"] += 1
    spaces = state.site.ed.majors_resus_spaces if state.site.ed else 0
    return {
        "ed_in_department": in_department,
        "ed_awaiting_assessment": stages["awaiting_assessment"],
        "ed_awaiting_treatment": stages["awaiting_treatment"],
        "ed_in_treatment": stages["in_treatment"],
        "ed_dta_waiting": stages["dta"],
        "ed_longest_dta_wait_minutes": round(_minutes(longest_dta), 1) if longest_dta is not None else None,
        "ed_time_in_department": buckets,
        "ed_over_12h_now": over_12h,
        "ed_arrivals_since_midnight": arrivals,
        "ed_arrivals_same_time_last_week": arrivals_last_week,
        "ed_departures_since_midnight": departures,
        "ed_within_4h_since_midnight": within_4h,
        "ed_12h_breaches_since_midnight": breaches_12h,
        "ed_seen_since_midnight": len(treatment_minutes),
        "ed_median_time_to_treatment_minutes": round(statistics.median(treatment_minutes), 1)
        if treatment_minutes
        else None,
        "ed_majors_resus_patients": majors_resus,
        "ed_majors_resus_spaces": spaces,
        "ed_stale_attendances": stale,
    }


def _handover_figures(state: SiteState, now: datetime) -> dict[str, object]:
    midnight = midnight_before(now)
    queue = stale = done = over_30 = over_60 = 0
    longest: timedelta | None = None
    total = lost = timedelta()
    for handover in state.handovers.values():
        arrived = handover.arrived_at.value if handover.arrived_at else None
        finished = handover.handed_over_at.value if handover.handed_over_at else None
        if arrived is None or arrived > now:
            continue
        if finished is None or finished > now:
            if now - arrived > STALE_AFTER:  # a leftover: counted apart, until a prune may forget it
                stale += now - arrived <= HISTORY
                continue
            queue += 1
            wait = now - arrived
            longest = wait if longest is None or wait > longest else longest
            continue
        if finished >= midnight:
            duration = max(finished - arrived, timedelta())
            done += 1
            total += duration
            over_30 += duration > timedelta(minutes=30)
            over_60 += duration > timedelta(minutes=60)
            lost += max(duration - HANDOVER_STANDARD, timedelta())
    return {
        "ambulance_queue": queue,
        "ambulance_longest_wait_minutes": round(_minutes(longest), 1) if longest is not None else None,
        "ambulance_stale_handovers": stale,
        "handovers_since_midnight": done,
        "handover_minutes_total": round(_minutes(total), 2),
        "handovers_over_30": over_30,
        "handovers_over_60": over_60,
        "handover_hours_lost": round(lost.total_seconds() / 3600.0, 2),
    }


def finish(m: SiteMetrics) -> SiteMetrics:
    """Derive every ratio from its numerator and denominator (the same for a site and a system)."""
    return m.model_copy(
        update={
            "ga_occupancy_pct": pct(m.ga_beds_occupied, m.ga_beds_open),
            "cc_occupancy_pct": pct(m.cc_beds_occupied, m.cc_beds_open),
            "escalation_beds_pct_of_open": pct(m.escalation_beds_open, m.beds_open),
            "ncr_pct_of_occupied": pct(m.ncr_patients, m.beds_occupied),
            "ed_over_12h_pct": pct(m.ed_over_12h_now, m.ed_in_department),
            "ed_attendance_variation_pct": pct(
                m.ed_arrivals_since_midnight - m.ed_arrivals_same_time_last_week,
                m.ed_arrivals_same_time_last_week,
            ),
            "ed_4h_performance_pct": pct(m.ed_within_4h_since_midnight, m.ed_departures_since_midnight),
            "ed_majors_resus_occupancy_pct": pct(m.ed_majors_resus_patients, m.ed_majors_resus_spaces),
            "mean_handover_minutes": round(m.handover_minutes_total / m.handovers_since_midnight, 1)
            if m.handovers_since_midnight
            else None,
        }
    )


SUMMED = (
    "beds_total",
    "beds_open",
    "beds_occupied",
    "beds_available",
    "beds_closed",
    "escalation_beds_open",
    "ga_beds_open",
    "ga_beds_occupied",
    "cc_beds_open",
    "cc_beds_occupied",
    "ncr_patients",
    "admissions_today",
    "discharges_today",
    "wards_without_bed_data",
    "ed_in_department",
    "ed_awaiting_assessment",
    "ed_awaiting_treatment",
    "ed_in_treatment",
    "ed_dta_waiting",
    "ed_over_12h_now",
    "ed_arrivals_since_midnight",
    "ed_arrivals_same_time_last_week",
    "ed_departures_since_midnight",
    "ed_within_4h_since_midnight",
    "ed_12h_breaches_since_midnight",
    "ed_seen_since_midnight",
    "ed_majors_resus_patients",
    "ed_majors_resus_spaces",
    "ed_stale_attendances",
    "ambulance_queue",
    "ambulance_stale_handovers",
    "handovers_since_midnight",
    "handover_minutes_total",
    "handovers_over_30",
    "handovers_over_60",
    "handover_hours_lost",
)


def fold(sites: list[SiteMetrics], as_of: datetime) -> SiteMetrics:
    """A system's metrics from its sites': sums, then ratios from the sums.

    Exceptions, documented in docs/metrics.md: the longest waits are the maximum over sites, and the
    median time to treatment is the sites' medians weighted by how many patients each saw.
    """
    values: dict[str, object] = {"as_of": as_of}
    for name in SUMMED:
        values[name] = sum(getattr(s, name) for s in sites)
    buckets: dict[str, int] = {}
    for s in sites:
        for name, n in s.ed_time_in_department.items():
            buckets[name] = buckets.get(name, 0) + n
    values["ed_time_in_department"] = buckets
    for name in ("ed_longest_dta_wait_minutes", "ambulance_longest_wait_minutes"):
        present = [getattr(s, name) for s in sites if getattr(s, name) is not None]
        values[name] = max(present) if present else None
    weighted = [
        (s.ed_median_time_to_treatment_minutes, s.ed_seen_since_midnight)
        for s in sites
        if s.ed_median_time_to_treatment_minutes is not None and s.ed_seen_since_midnight
    ]
    seen = sum(n for _, n in weighted)
    values["ed_median_time_to_treatment_minutes"] = (
        round(sum(v * n for v, n in weighted) / seen, 1) if seen else None
    )
    return finish(SiteMetrics.model_validate(values))


def _bucket_for(stay: timedelta) -> str:
    """The time-in-department bucket of a stay: its upper bound included (exactly 12 h is `8-12h`)."""
    for name, upper in _BUCKET_LIMITS:
        if upper is None or stay <= upper:
            return name
    raise AssertionError("unreachable: the last bucket is open-ended")
