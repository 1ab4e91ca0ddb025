"""Ward, site and system metrics computed from live state: hand-computed ED, handover and bed figures,
Europe/London days across the clock changes, folding sites into a system, and OPEL levels."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.command_centre.london_time import local_date, midnight_before, same_time_last_week
from services.command_centre.metrics import (
    GA_TYPES,
    SiteMetrics,
    all_ward_metrics,
    finish,
    fold,
    site_metrics,
    ward_metrics,
)
from services.command_centre.site_state import HISTORY, STALE_AFTER, SiteState
from shared.events import (
    AdmissionCancelled,
    AmbulanceArrived,
    AmbulanceHandedOver,
    BedNcrChanged,
    BedStatus,
    BedStatusChanged,
    EdArrived,
    EdAssessed,
    EdDecisionToAdmit,
    EdDeparted,
    EdSeen,
    Envelope,
    LeaveOfAbsence,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientTransferred,
    PatientUpdated,
    Payload,
)
from shared.opel import KNOWN_METRICS, Parameter, load_profile, score_site
from shared.organisation import Site, load_organisation

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ORG = load_organisation(ROOT / "deploy/org/sample-icb.yaml")
RXN01 = ORG.sites_by_id["RXN01"]
RXN02 = ORG.sites_by_id["RXN02"]
PROFILE = load_profile(ROOT / "deploy/opel/default-profile.yaml")

NOW = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)  # GMT, so local midnight is 00:00Z
MIDNIGHT = datetime(2026, 2, 3, 0, 0, tzinfo=UTC)
YESTERDAY = datetime(2026, 2, 2, 0, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0, day: datetime = MIDNIGHT) -> datetime:
    return day + timedelta(hours=hour, minutes=minute)


def ward_of(bed_id: str) -> str:
    return bed_id.rsplit("-", 2)[0]


def loc(bed_id: str) -> Location:
    return Location(ward_id=ward_of(bed_id), bed_id=bed_id)


def event(payload: Payload, occurred_at: datetime, site_id: str = "RXN01") -> Envelope:
    return Envelope.wrap(
        payload,
        occurred_at=occurred_at,
        source="test",
        site_id=site_id,
        entity_id="test",
        event_id=uuid.uuid4(),
    )


def state_of(site: Site, envelopes: list[Envelope]) -> SiteState:
    state = SiteState(site, ORG.system.id)
    for envelope in envelopes:
        state.apply(envelope)
    return state


def bed(bed_id: str, status: BedStatus, when: datetime) -> Envelope:
    return event(BedStatusChanged(ward_id=ward_of(bed_id), bed_id=bed_id, status=status), when)


def ncr(bed_id: str, flag: bool, when: datetime) -> Envelope:
    return event(BedNcrChanged(ward_id=ward_of(bed_id), bed_id=bed_id, no_criteria_to_reside=flag), when)


def admit(encounter: str, bed_id: str, when: datetime, specialty: str | None = None) -> Envelope:
    return event(PatientAdmitted(encounter_id=encounter, location=loc(bed_id), specialty=specialty), when)


def discharge(encounter: str, bed_id: str, when: datetime) -> Envelope:
    return event(PatientDischarged(encounter_id=encounter, location=loc(bed_id)), when)


def attendance(
    attendance_id: str,
    arrived: datetime,
    *,
    acuity: int | None = None,
    assessed: datetime | None = None,
    seen: datetime | None = None,
    dta: datetime | None = None,
    departed: datetime | None = None,
) -> list[Envelope]:
    """The ECDS milestones of one attendance (assessment ten minutes after arrival unless given)."""
    out = [event(EdArrived(attendance_id=attendance_id), arrived)]
    if acuity is not None:
        assessed = assessed or arrived + timedelta(minutes=10)
        out.append(event(EdAssessed(attendance_id=attendance_id, acuity=acuity), assessed))
    if seen is not None:
        out.append(event(EdSeen(attendance_id=attendance_id), seen))
    if dta is not None:
        out.append(event(EdDecisionToAdmit(attendance_id=attendance_id, specialty="acute medicine"), dta))
    if departed is not None:
        out.append(event(EdDeparted(attendance_id=attendance_id, disposition="discharged"), departed))
    return out


def handover(handover_id: str, arrived: datetime, handed_over: datetime | None = None) -> list[Envelope]:
    out = [event(AmbulanceArrived(handover_id=handover_id), arrived)]
    if handed_over is not None:
        out.append(event(AmbulanceHandedOver(handover_id=handover_id, arrived_at=arrived), handed_over))
    return out


# --- ED ----------------------------------------------------------------------------------------------


def ed_state() -> SiteState:
    """Twelve attendances at RXN01 around NOW (12:00, GMT). See each test for the arithmetic."""
    envelopes = [
        # in the department now
        *attendance("a1", at(11, 30)),  # awaiting assessment, 0.5 h
        *attendance("a2", at(10, 30), acuity=2),  # awaiting treatment, 1.5 h
        *attendance("a3", at(9), acuity=3, seen=at(9, 40)),  # in treatment, 3 h; seen after 40 min
        *attendance("a4", at(6), acuity=1, seen=at(6, 20), dta=at(8)),  # DTA 4 h ago, 6 h; seen 20 min
        *attendance("a5", at(23, day=YESTERDAY), acuity=2, seen=at(1), dta=at(2)),  # DTA 10 h, 13 h; 120 min
        *attendance("a12", at(10), acuity=5),  # awaiting treatment, exactly 2 h
        # departed since midnight
        *attendance("a6", at(20, day=YESTERDAY), acuity=4, seen=at(21, day=YESTERDAY), departed=at(2)),  # 6 h
        *attendance("a7", at(7), seen=at(7, 30), departed=at(9)),  # 2 h; seen after 30 min
        *attendance("a8", at(8, day=YESTERDAY), departed=at(1)),  # 17 h
        *attendance("a10", at(11), acuity=5, departed=at(11, 50)),  # 50 min
        # departed yesterday, and one arriving after NOW
        *attendance("a9", at(10, day=YESTERDAY), departed=at(14, day=YESTERDAY)),
        *attendance("a11", at(12, 30), acuity=2),
        # the same day last week (Tuesday 27 January): three before 12:00, two outside the window
        *attendance(
            "w1", datetime(2026, 1, 27, 3, 0, tzinfo=UTC), departed=datetime(2026, 1, 27, 5, tzinfo=UTC)
        ),
        *attendance(
            "w2", datetime(2026, 1, 27, 8, 0, tzinfo=UTC), departed=datetime(2026, 1, 27, 9, tzinfo=UTC)
        ),
        *attendance(
            "w3", datetime(2026, 1, 27, 11, 59, tzinfo=UTC), departed=datetime(2026, 1, 27, 13, tzinfo=UTC)
        ),
        *attendance(
            "w4", datetime(2026, 1, 27, 12, 1, tzinfo=UTC), departed=datetime(2026, 1, 27, 13, tzinfo=UTC)
        ),
        *attendance(
            "w5", datetime(2026, 1, 26, 23, 0, tzinfo=UTC), departed=datetime(2026, 1, 27, 1, tzinfo=UTC)
        ),
    ]
    return state_of(RXN01, envelopes)


@pytest.fixture(scope="module")
def ed() -> SiteMetrics:
    return site_metrics(ed_state(), NOW)


def test_ed_census_by_stage(ed: SiteMetrics) -> None:
    # a1 | a2, a12 | a3 | a4, a5; a6-a10 have left, a11 has not arrived yet
    assert ed.ed_in_department == 6
    assert ed.ed_awaiting_assessment == 1
    assert ed.ed_awaiting_treatment == 2
    assert ed.ed_in_treatment == 1
    assert ed.ed_dta_waiting == 2


def test_ed_longest_dta_wait(ed: SiteMetrics) -> None:
    assert ed.ed_longest_dta_wait_minutes == 600.0  # a5: DTA at 02:00, now 12:00


def test_ed_time_in_department_buckets(ed: SiteMetrics) -> None:
    assert ed.ed_time_in_department == {
        "0-1h": 1,  # a1
        "1-2h": 2,  # a2, and a12 at exactly 2 h (a bucket includes its upper bound)
        "2-4h": 1,  # a3
        "4-8h": 1,  # a4
        "8-12h": 0,
        "over_12h": 1,  # a5
    }


def test_ed_over_12_hours_now(ed: SiteMetrics) -> None:
    assert ed.ed_over_12h_now == 1
    assert ed.ed_over_12h_pct == 16.67  # 1 of 6


def test_ed_four_hour_performance_since_midnight(ed: SiteMetrics) -> None:
    # departures since midnight: a6 (6 h), a7 (2 h), a8 (17 h), a10 (50 min)
    assert ed.ed_departures_since_midnight == 4
    assert ed.ed_within_4h_since_midnight == 2
    assert ed.ed_4h_performance_pct == 50.0
    assert ed.ed_12h_breaches_since_midnight == 1


def test_ed_four_and_twelve_hour_boundaries_are_the_nhs_ones_in_every_figure() -> None:
    """Within 4 hours is 4 h 00 min or less; a 12-hour breach is more than 12 h 00 min from arrival.

    The time-in-department buckets put exactly 12 h in `8-12h` and exactly 4 h in `2-4h`, as the
    patients over 12 hours now and the 4-hour figures count them."""
    second = timedelta(seconds=1)
    envelopes = [
        # in the department at NOW
        *attendance("in-4h", NOW - timedelta(hours=4)),
        *attendance("in-4h-1s", NOW - timedelta(hours=4) - second),
        *attendance("in-12h", NOW - timedelta(hours=12)),
        *attendance("in-12h-1s", NOW - timedelta(hours=12) - second),
        # departed since midnight
        *attendance("out-4h", at(5), departed=at(9)),
        *attendance("out-4h-1s", at(5) - second, departed=at(9)),
        *attendance("out-12h", at(20, day=YESTERDAY), departed=at(8)),
        *attendance("out-12h-1s", at(20, day=YESTERDAY) - second, departed=at(8)),
    ]
    m = site_metrics(state_of(RXN01, envelopes), NOW)

    assert m.ed_time_in_department == {
        "0-1h": 0,
        "1-2h": 0,
        "2-4h": 1,  # exactly 4 h
        "4-8h": 1,  # 4 h and a second
        "8-12h": 1,  # exactly 12 h: not over 12 hours
        "over_12h": 1,  # 12 h and a second
    }
    assert m.ed_over_12h_now == m.ed_time_in_department["over_12h"] == 1
    assert m.ed_over_12h_pct == 25.0
    assert m.ed_departures_since_midnight == 4
    assert m.ed_within_4h_since_midnight == 1  # exactly 4 h meets the standard; a second more does not
    assert m.ed_12h_breaches_since_midnight == 1  # exactly 12 h is not a breach; a second more is


def test_ed_median_time_to_treatment_of_those_seen_since_midnight(ed: SiteMetrics) -> None:
    # a4 20, a7 30, a3 40, a5 120 (a6 was seen yesterday)
    assert ed.ed_seen_since_midnight == 4
    assert ed.ed_median_time_to_treatment_minutes == 35.0


def test_ed_majors_and_resus_occupancy(ed: SiteMetrics) -> None:
    # acuity 1-3 in the department: a2, a3, a4, a5 (a11 has not arrived, a6 has left)
    assert ed.ed_majors_resus_patients == 4
    assert ed.ed_majors_resus_spaces == 32
    assert ed.ed_majors_resus_occupancy_pct == 12.5


def test_ed_attendances_against_the_same_time_last_week(ed: SiteMetrics) -> None:
    # today up to 12:00: a1, a2, a3, a4, a7, a10, a12; last week 00:00-12:00: w1, w2, w3
    assert ed.ed_arrivals_since_midnight == 7
    assert ed.ed_arrivals_same_time_last_week == 3
    assert ed.ed_attendance_variation_pct == 133.33


def test_ed_figures_are_empty_without_attendances() -> None:
    m = site_metrics(state_of(RXN01, []), NOW)
    assert (m.ed_in_department, m.ed_arrivals_since_midnight) == (0, 0)
    assert m.ed_4h_performance_pct is None
    assert m.ed_over_12h_pct is None
    assert m.ed_attendance_variation_pct is None
    assert m.ed_median_time_to_treatment_minutes is None
    assert m.ed_longest_dta_wait_minutes is None
    assert m.ed_majors_resus_occupancy_pct == 0.0


# --- ambulance handovers --------------------------------------------------------------------------


def handover_state() -> SiteState:
    envelopes = [
        *handover("h1", at(11, 20)),  # waiting 40 min
        *handover("h2", at(11, 50)),  # waiting 10 min
        *handover("h3", at(12, 10)),  # not arrived yet
        *handover("h4", at(10), at(10, 10)),  # 10 min
        *handover("h5", at(8), at(8, 45)),  # 45 min: over 30, 30 min lost
        *handover("h6", at(6), at(7, 15)),  # 75 min: over 30 and 60, 60 min lost
        *handover("h7", at(23, 40, YESTERDAY), at(0, 20)),  # 40 min, finished after midnight: 25 lost
        *handover("h8", at(23, 0, YESTERDAY), at(23, 50, YESTERDAY)),  # finished yesterday
        *handover("h9", at(11), at(12, 30)),  # handed over after NOW: still waiting, 60 min
    ]
    return state_of(RXN01, envelopes)


def test_handover_queue_and_longest_wait() -> None:
    m = site_metrics(handover_state(), NOW)
    assert m.ambulance_queue == 3  # h1, h2, h9
    assert m.ambulance_longest_wait_minutes == 60.0


def test_handovers_since_midnight() -> None:
    m = site_metrics(handover_state(), NOW)
    assert m.handovers_since_midnight == 4  # h4, h5, h6, h7
    assert m.handover_minutes_total == 170.0
    assert m.mean_handover_minutes == 42.5
    assert m.handovers_over_30 == 3
    assert m.handovers_over_60 == 1
    assert m.handover_hours_lost == 1.92  # (0 + 30 + 60 + 25) min = 115 min


def test_the_handover_message_arrival_time_is_authoritative() -> None:
    envelopes = [
        event(AmbulanceArrived(handover_id="h1"), at(9, 55)),
        event(AmbulanceHandedOver(handover_id="h1", arrived_at=at(10)), at(10, 40)),
    ]
    m = site_metrics(state_of(RXN01, envelopes), NOW)
    assert (m.handovers_since_midnight, m.mean_handover_minutes, m.handover_hours_lost) == (1, 40.0, 0.42)


def test_a_handover_message_without_an_arrival_event_still_counts() -> None:
    envelopes = [event(AmbulanceHandedOver(handover_id="h1", arrived_at=at(9)), at(10, 30))]
    m = site_metrics(state_of(RXN01, envelopes), NOW)
    assert (m.ambulance_queue, m.handovers_since_midnight, m.handovers_over_60) == (0, 1, 1)
    assert m.mean_handover_minutes == 90.0


# --- leftovers: attendances never departed and ambulances never handed over go stale ---------------

SECOND = timedelta(seconds=1)
EMPTY_BUCKETS = {"0-1h": 0, "1-2h": 0, "2-4h": 0, "4-8h": 0, "8-12h": 0, "over_12h": 0}


def census(m: SiteMetrics) -> tuple[Any, ...]:
    """The live ED figures a stale attendance leaves."""
    return (
        m.ed_in_department,
        (m.ed_awaiting_assessment, m.ed_awaiting_treatment, m.ed_in_treatment, m.ed_dta_waiting),
        m.ed_longest_dta_wait_minutes,
        m.ed_time_in_department,
        (m.ed_over_12h_now, m.ed_over_12h_pct),
        (m.ed_majors_resus_patients, m.ed_majors_resus_occupancy_pct),
    )


def test_an_attendance_last_heard_72_hours_ago_counts_and_a_second_later_is_stale() -> None:
    # a majors patient whose departure never came: arrived and assessed (acuity 2) at the same moment
    arrived = NOW - STALE_AFTER
    state = state_of(RXN01, attendance("left", arrived, acuity=2, assessed=arrived))

    held = site_metrics(state, NOW)
    over_12h = {**EMPTY_BUCKETS, "over_12h": 1}
    assert census(held) == (1, (0, 1, 0, 0), None, over_12h, (1, 100.0), (1, 3.12))  # 1 of 32 spaces
    assert held.ed_stale_attendances == 0

    stale = site_metrics(state, NOW + SECOND)
    assert census(stale) == (0, (0, 0, 0, 0), None, EMPTY_BUCKETS, (0, None), (0, 0.0))
    assert stale.ed_stale_attendances == 1


def test_a_later_milestone_moves_the_point_an_attendance_goes_stale() -> None:
    # a DTA 10 hours after arrival: last heard of then, so stale 82 hours after arrival, not 72
    arrived = NOW - STALE_AFTER - timedelta(hours=10)
    dta = arrived + timedelta(hours=10)
    state = state_of(RXN01, attendance("board", arrived, acuity=3, assessed=arrived, dta=dta))

    held = site_metrics(state, NOW)
    assert (held.ed_in_department, held.ed_dta_waiting, held.ed_stale_attendances) == (1, 1, 0)
    assert held.ed_longest_dta_wait_minutes == 4320.0  # 72 h since the DTA
    assert held.ed_time_in_department["over_12h"] == 1

    stale = site_metrics(state, NOW + SECOND)
    assert census(stale) == (0, (0, 0, 0, 0), None, EMPTY_BUCKETS, (0, None), (0, 0.0))
    assert stale.ed_stale_attendances == 1


def test_a_stale_attendance_still_counts_among_last_weeks_arrivals() -> None:
    # arrived at 08:00 on the same day last week, seen at 08:30, never departed
    arrived = NOW - timedelta(days=7, hours=4)
    state = state_of(RXN01, attendance("w1", arrived, seen=arrived + timedelta(minutes=30)))
    m = site_metrics(state, NOW)
    assert (m.ed_arrivals_same_time_last_week, m.ed_stale_attendances, m.ed_in_department) == (1, 1, 0)


def test_a_late_departure_makes_a_stale_attendance_a_departed_one() -> None:
    arrived = NOW - timedelta(days=4)  # its departure, at 09:00 today, comes after it went stale
    envelopes = attendance("late", arrived, departed=at(9))
    state = state_of(RXN01, envelopes[:1])
    assert site_metrics(state, NOW).ed_stale_attendances == 1

    state.apply(envelopes[1])

    m = site_metrics(state, NOW)
    assert (m.ed_stale_attendances, m.ed_in_department) == (0, 0)
    assert (m.ed_departures_since_midnight, m.ed_within_4h_since_midnight) == (1, 0)
    assert m.ed_12h_breaches_since_midnight == 1  # a stay of 3 days 21 hours
    assert m == site_metrics(state_of(RXN01, envelopes), NOW)


def test_a_stale_attendance_is_counted_until_a_prune_may_forget_it() -> None:
    arrived = NOW - HISTORY
    state = state_of(RXN01, attendance("old", arrived, acuity=4, assessed=arrived))
    assert site_metrics(state, NOW).ed_stale_attendances == 1
    assert site_metrics(state, NOW + SECOND).ed_stale_attendances == 0


def test_an_ambulance_waiting_72_hours_queues_and_a_second_later_is_stale() -> None:
    # h1's handover message never came; h2 has waited half an hour
    state = state_of(RXN01, [*handover("h1", NOW - STALE_AFTER), *handover("h2", at(11, 30))])

    held = site_metrics(state, NOW)
    assert (held.ambulance_queue, held.ambulance_longest_wait_minutes) == (2, 4320.0)
    assert held.ambulance_stale_handovers == 0

    stale = site_metrics(state, NOW + SECOND)
    assert (stale.ambulance_queue, stale.ambulance_longest_wait_minutes) == (1, 30.0)  # h2, 30 min 1 s
    assert stale.ambulance_stale_handovers == 1


def test_a_late_handover_makes_a_stale_ambulance_a_handover_since_midnight() -> None:
    arrived = NOW - timedelta(days=4)
    state = state_of(RXN01, handover("h1", arrived))
    assert site_metrics(state, NOW).ambulance_stale_handovers == 1

    state.apply(event(AmbulanceHandedOver(handover_id="h1", arrived_at=arrived), at(9)))

    m = site_metrics(state, NOW)
    assert (m.ambulance_stale_handovers, m.ambulance_queue) == (0, 0)
    assert (m.handovers_since_midnight, m.handovers_over_60, m.handover_minutes_total) == (1, 1, 5580.0)


def test_a_stale_ambulance_is_counted_until_a_prune_may_forget_it() -> None:
    state = state_of(RXN01, handover("h1", NOW - HISTORY))
    assert site_metrics(state, NOW).ambulance_stale_handovers == 1
    assert site_metrics(state, NOW + SECOND).ambulance_stale_handovers == 0


# --- beds ----------------------------------------------------------------------------------------------

SMALL = Site.model_validate(
    {
        "id": "TST01",
        "name": "Test Hospital",
        "pas_facility": "TST01",
        "ed": {"majors_resus_spaces": 10},
        "wards": [
            {
                "id": "TST01-MED",
                "name": "Medicine",
                "pas_code": "MED",
                "specialty": "general medicine",
                "type": "general_acute",
                "bays": 1,
                "beds_per_bay": 8,
                "escalation_beds": 2,
            },
            {
                "id": "TST01-AMU",
                "name": "Assessment",
                "pas_code": "AMU",
                "specialty": "acute medicine",
                "type": "assessment",
                "bays": 1,
                "beds_per_bay": 4,
            },
            {
                "id": "TST01-PAED",
                "name": "Children",
                "pas_code": "PAED",
                "specialty": "paediatrics",
                "type": "paediatric",
                "bays": 1,
                "beds_per_bay": 2,
            },
            {
                "id": "TST01-ITU",
                "name": "Intensive care",
                "pas_code": "ITU",
                "specialty": "critical care",
                "type": "critical_care",
                "bays": 1,
                "beds_per_bay": 4,
            },
        ],
    }
)
WARD = {w.id: w for w in SMALL.wards}
MED, AMU, PAED, ITU = "TST01-MED", "TST01-AMU", "TST01-PAED", "TST01-ITU"


def beds_state() -> SiteState:
    y = at(15, day=YESTERDAY)
    envelopes = [
        # Medicine: 8 core + 2 escalation beds
        admit("m1", "TST01-MED-B1-1", y, specialty="cardiology"),  # an outlier
        admit("m2", "TST01-MED-B1-2", y, specialty="General Medicine"),  # not: case differs only
        admit("m3", "TST01-MED-B1-3", y),
        admit("m4", "TST01-MED-B1-4", y),
        admit("m5", "TST01-MED-B1-5", at(8)),
        admit("m6", "TST01-MED-B1-6", at(8)),
        admit("m7", "TST01-MED-ESC-1", at(8)),
        admit("m8", "TST01-MED-B1-7", at(10)),
        event(AdmissionCancelled(encounter_id="m8", location=loc("TST01-MED-B1-7")), at(10, 30)),
        admit("m9", "TST01-MED-B1-8", at(10, day=YESTERDAY)),
        discharge("m9", "TST01-MED-B1-8", at(6)),
        bed("TST01-MED-B1-8", BedStatus.closed, at(6, 30)),
        admit("m10", "TST01-MED-B1-7", datetime(2026, 2, 1, 10, tzinfo=UTC)),
        discharge("m10", "TST01-MED-B1-7", at(20, day=YESTERDAY)),
        bed("TST01-MED-ESC-2", BedStatus.closed, at(7)),
        event(PatientUpdated(encounter_id="m3", expected_discharge=date(2026, 2, 3)), at(9)),
        event(PatientUpdated(encounter_id="m4", expected_discharge=date(2026, 2, 4)), at(9)),
        event(PatientUpdated(encounter_id="m5", no_criteria_to_reside=True), at(9)),
        event(PatientPreadmitted(encounter_id="m11", location=Location(ward_id=MED)), at(9)),
        event(LeaveOfAbsence(encounter_id="m6", state="started"), at(11)),
        # Assessment: 4 beds
        admit("a1", "TST01-AMU-B1-1", at(9), specialty="acute medicine"),
        admit("a2", "TST01-AMU-B1-2", at(9), specialty="general surgery"),  # an outlier
        bed("TST01-AMU-B1-3", BedStatus.housekeeping, at(7)),
        admit("a3", "TST01-AMU-B1-4", at(7)),
        event(
            PatientTransferred(
                encounter_id="a3", location=loc("TST01-PAED-B1-1"), previous=loc("TST01-AMU-B1-4")
            ),
            at(10),
        ),
        # Intensive care: 4 beds, reported by bed management only
        bed("TST01-ITU-B1-1", BedStatus.occupied, at(5)),
        bed("TST01-ITU-B1-2", BedStatus.occupied, at(5)),
        bed("TST01-ITU-B1-3", BedStatus.occupied, at(5)),
        bed("TST01-ITU-B1-4", BedStatus.closed, at(5)),
        # no criteria to reside
        ncr("TST01-MED-B1-1", True, at(10)),
        ncr("TST01-AMU-B1-1", True, at(10)),
        ncr("TST01-MED-B1-7", True, at(10)),  # an empty bed: not counted
        ncr("TST01-MED-B1-2", True, at(10)),
        ncr("TST01-MED-B1-2", False, at(11)),
    ]
    return state_of(SMALL, envelopes)


@pytest.fixture(scope="module")
def beds() -> SiteState:
    return beds_state()


def test_medicine_ward_metrics(beds: SiteState) -> None:
    wm = ward_metrics(beds, WARD[MED], NOW)
    assert wm.beds_total == 10
    assert wm.counts == {
        "occupied": 7,
        "unoccupied": 1,
        "closed": 2,
        "housekeeping": 0,
        "isolated": 0,
        "contaminated": 0,
    }
    assert (wm.available, wm.core_beds_open, wm.escalation_beds_open) == (1, 7, 1)
    assert wm.patients == 7
    assert wm.admissions_today == 3  # m5, m6, m7; m8 was cancelled, m1-m4 came yesterday
    assert wm.discharges_today == 1  # m9; m10 left yesterday
    assert (wm.transfers_in_today, wm.transfers_out_today) == (0, 0)
    assert wm.outliers == 1
    assert wm.ncr_patients == 2  # B1-1 and B1-5
    assert wm.pending_admissions == 1
    assert wm.expected_discharges_today == 1
    assert wm.on_leave == 1


def test_assessment_and_paediatric_ward_metrics(beds: SiteState) -> None:
    amu = ward_metrics(beds, WARD[AMU], NOW)
    assert (amu.counts["occupied"], amu.counts["housekeeping"], amu.available) == (2, 1, 1)
    assert (amu.patients, amu.admissions_today, amu.transfers_out_today, amu.transfers_in_today) == (
        2,
        3,
        1,
        0,
    )
    assert (amu.outliers, amu.ncr_patients) == (1, 1)

    paed = ward_metrics(beds, WARD[PAED], NOW)
    assert (paed.counts["occupied"], paed.available, paed.patients) == (1, 1, 1)
    assert (paed.admissions_today, paed.transfers_in_today, paed.transfers_out_today) == (0, 1, 0)


def test_site_bed_figures(beds: SiteState) -> None:
    m = site_metrics(beds, NOW)
    assert (m.beds_total, m.beds_open, m.beds_occupied, m.beds_available, m.beds_closed) == (20, 17, 13, 3, 3)
    # G&A = Medicine + Assessment + Paediatric: open 8 + 4 + 2, occupied 7 + 2 + 1
    assert (m.ga_beds_open, m.ga_beds_occupied, m.ga_occupancy_pct) == (14, 10, 71.43)
    assert (m.cc_beds_open, m.cc_beds_occupied, m.cc_occupancy_pct) == (3, 3, 100.0)
    assert (m.escalation_beds_open, m.escalation_beds_pct_of_open) == (1, 5.88)  # 1 of 17
    assert (m.ncr_patients, m.ncr_pct_of_occupied) == (3, 23.08)  # 3 of 13
    assert (m.admissions_today, m.discharges_today) == (6, 1)


def test_an_empty_rxn01_has_its_configured_beds_open() -> None:
    m = site_metrics(state_of(RXN01, []), NOW)
    assert (m.beds_total, m.beds_open, m.beds_available, m.beds_occupied) == (352, 352, 352, 0)
    assert (m.ga_beds_open, m.cc_beds_open) == (328, 24)
    assert (m.ga_occupancy_pct, m.cc_occupancy_pct) == (0.0, 0.0)
    assert (m.escalation_beds_open, m.escalation_beds_pct_of_open) == (10, 2.84)
    assert m.ncr_pct_of_occupied is None
    # no ward has reported: each is without bed data, its beds available all the same
    assert m.wards_without_bed_data == len(RXN01.wards) == 14
    assert all(w.last_bed_event_at is None for w in all_ward_metrics(state_of(RXN01, []), NOW).values())


def test_a_ward_reports_by_a_bed_event_a_flag_or_a_patient_placed_in_a_bed() -> None:
    envelopes = [
        bed("TST01-ITU-B1-1", BedStatus.closed, at(5)),
        ncr("TST01-ITU-B1-2", True, at(6)),  # a flag on an empty bed is a write to it too
        admit("m1", "TST01-MED-B1-1", at(8)),  # an ADT admission placing the patient in a bed
        admit("m2", "TST01-MED-B1-2", at(7)),
        bed("TST01-AMU-B1-1", BedStatus.occupied, at(12, 30)),  # dated after NOW
    ]
    state = state_of(SMALL, envelopes)

    wards = all_ward_metrics(state, NOW)
    assert wards[ITU].last_bed_event_at == at(6)
    assert wards[MED].last_bed_event_at == at(8)
    assert wards[AMU].last_bed_event_at is None  # its one event does not count yet
    assert wards[PAED].last_bed_event_at is None
    m = site_metrics(state, NOW)
    assert m.wards_without_bed_data == 2  # AMU, PAED
    # and every other figure is as before: their beds count as unoccupied (the AMU's future event
    # already counts in its bed's status, as a bed status always has)
    assert (wards[PAED].available, wards[AMU].available) == (2, 3)
    assert (m.beds_available, m.beds_occupied, m.beds_closed) == (16, 3, 1)  # of 20

    later = at(12, 30)
    assert all_ward_metrics(state, later)[AMU].last_bed_event_at == later
    assert site_metrics(state, later).wards_without_bed_data == 1


def test_a_patient_leaving_a_bed_writes_to_it_and_the_latest_write_counts() -> None:
    envelopes = [
        bed("TST01-AMU-B1-1", BedStatus.housekeeping, at(6)),
        admit("a1", "TST01-AMU-B1-1", at(9)),
        discharge("a1", "TST01-AMU-B1-1", at(10, 15)),  # frees the bed: the ward's latest write
        bed("TST01-AMU-B1-2", BedStatus.closed, at(10)),
    ]
    assert ward_metrics(state_of(SMALL, envelopes), WARD[AMU], NOW).last_bed_event_at == at(10, 15)


def test_a_beds_latest_write_after_now_hides_its_earlier_ones() -> None:
    """Only a bed's latest write is kept: until `now` reaches it the bed gives no time (docs/metrics.md)."""
    envelopes = [
        bed("TST01-PAED-B1-1", BedStatus.closed, at(9)),
        bed("TST01-PAED-B1-1", BedStatus.unoccupied, at(12, 5)),
    ]
    state = state_of(SMALL, envelopes)
    assert ward_metrics(state, WARD[PAED], NOW).last_bed_event_at is None
    assert ward_metrics(state, WARD[PAED], at(12, 5)).last_bed_event_at == at(12, 5)
    state.apply(bed("TST01-PAED-B1-2", BedStatus.closed, at(9, 30)))
    assert ward_metrics(state, WARD[PAED], NOW).last_bed_event_at == at(9, 30)


def test_expected_discharge_today_is_the_london_date() -> None:
    now = datetime(2026, 7, 1, 23, 30, tzinfo=UTC)  # 00:30 BST on 2 July
    envelopes = [
        admit("e1", "TST01-MED-B1-1", now - timedelta(days=2)),
        admit("e2", "TST01-MED-B1-2", now - timedelta(days=2)),
        event(
            PatientUpdated(encounter_id="e1", expected_discharge=date(2026, 7, 2)), now - timedelta(hours=5)
        ),
        event(
            PatientUpdated(encounter_id="e2", expected_discharge=date(2026, 7, 1)), now - timedelta(hours=5)
        ),
    ]
    assert ward_metrics(state_of(SMALL, envelopes), WARD[MED], now).expected_discharges_today == 1


# --- Europe/London days across the clock changes ---------------------------------------------------

SPRING = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # clocks went forward at 01:00 GMT
AUTUMN = datetime(2026, 10, 25, 12, 0, tzinfo=UTC)  # clocks went back at 02:00 BST (01:00 UTC)


@pytest.mark.parametrize(
    ("now", "midnight"),
    [
        (SPRING, datetime(2026, 3, 29, 0, 0, tzinfo=UTC)),
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 0, 0, tzinfo=UTC)),
        (datetime(2026, 3, 29, 23, 30, tzinfo=UTC), datetime(2026, 3, 29, 23, 0, tzinfo=UTC)),
        (AUTUMN, datetime(2026, 10, 24, 23, 0, tzinfo=UTC)),
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 24, 23, 0, tzinfo=UTC)),
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 24, 23, 0, tzinfo=UTC)),
        (datetime(2026, 10, 24, 22, 30, tzinfo=UTC), datetime(2026, 10, 23, 23, 0, tzinfo=UTC)),
        (datetime(2026, 10, 25, 23, 30, tzinfo=UTC), datetime(2026, 10, 24, 23, 0, tzinfo=UTC)),
        (datetime(2026, 10, 26, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 0, 0, tzinfo=UTC)),
    ],
)
def test_midnight_before_on_the_clock_change_days(now: datetime, midnight: datetime) -> None:
    assert midnight_before(now) == midnight
    assert midnight_before(now).astimezone(UTC) == midnight


def test_local_date_follows_london_time() -> None:
    assert local_date(datetime(2026, 10, 24, 23, 30, tzinfo=UTC)) == date(2026, 10, 25)
    assert local_date(datetime(2026, 10, 25, 23, 30, tzinfo=UTC)) == date(2026, 10, 25)
    assert local_date(datetime(2026, 3, 28, 23, 30, tzinfo=UTC)) == date(2026, 3, 28)


@pytest.mark.parametrize(
    ("now", "last_week"),
    [
        # 09:00 GMT on 1 Nov → 09:00 GMT on 25 Oct (already after that morning's change)
        (datetime(2026, 11, 1, 9, 0, tzinfo=UTC), datetime(2026, 10, 25, 9, 0, tzinfo=UTC)),
        # 09:00 GMT on 26 Oct → 09:00 BST on 19 Oct, which is 08:00Z: 169 hours, not 168
        (datetime(2026, 10, 26, 9, 0, tzinfo=UTC), datetime(2026, 10, 19, 8, 0, tzinfo=UTC)),
        # 12:00 GMT on 25 Oct → 12:00 BST on 18 Oct
        (AUTUMN, datetime(2026, 10, 18, 11, 0, tzinfo=UTC)),
        # 10:00 BST on 1 Apr → 10:00 GMT on 25 Mar: 167 hours
        (datetime(2026, 4, 1, 9, 0, tzinfo=UTC), datetime(2026, 3, 25, 10, 0, tzinfo=UTC)),
        # 13:00 BST on 29 Mar → 13:00 GMT on 22 Mar
        (SPRING, datetime(2026, 3, 22, 13, 0, tzinfo=UTC)),
    ],
)
def test_same_time_last_week_is_the_same_wall_clock_time(now: datetime, last_week: datetime) -> None:
    assert same_time_last_week(now).astimezone(UTC) == last_week


def test_since_midnight_on_the_autumn_change_day() -> None:
    envelopes = [
        *attendance("in", datetime(2026, 10, 24, 23, 30, tzinfo=UTC)),  # 00:30 BST on the 25th
        *attendance("out", datetime(2026, 10, 24, 22, 30, tzinfo=UTC)),  # 23:30 BST on the 24th
        # 01:30 BST to 04:45 GMT: 3 h 15 min on the wall clock, 4 h 15 min in fact
        *attendance(
            "long",
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
            departed=datetime(2026, 10, 25, 4, 45, tzinfo=UTC),
        ),
        *attendance(
            "short",
            datetime(2026, 10, 25, 5, 0, tzinfo=UTC),
            departed=datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        ),
        *attendance(
            "left-before",
            datetime(2026, 10, 24, 20, 0, tzinfo=UTC),
            departed=datetime(2026, 10, 24, 22, 30, tzinfo=UTC),
        ),
        *attendance(
            "left-after",
            datetime(2026, 10, 24, 21, 0, tzinfo=UTC),
            departed=datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
        ),
        *handover(
            "h-in", datetime(2026, 10, 24, 23, 0, tzinfo=UTC), datetime(2026, 10, 24, 23, 30, tzinfo=UTC)
        ),
        *handover(
            "h-out", datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 24, 22, 50, tzinfo=UTC)
        ),
    ]
    m = site_metrics(state_of(RXN01, envelopes), AUTUMN)

    assert m.ed_arrivals_since_midnight == 3  # in, long, short
    assert m.ed_departures_since_midnight == 3  # long, short, left-after
    assert m.ed_within_4h_since_midnight == 2  # short (3 h), left-after (2.5 h); not long
    assert m.ed_4h_performance_pct == 66.67
    assert m.handovers_since_midnight == 1
    assert m.mean_handover_minutes == 30.0


def test_since_midnight_on_the_spring_change_day() -> None:
    envelopes = [
        *attendance("before", datetime(2026, 3, 28, 23, 30, tzinfo=UTC)),  # 23:30 GMT on the 28th
        *attendance("gmt", datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),  # 00:30 GMT
        *attendance("bst", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),  # 02:30 BST
        # 00:45 GMT to 04:30 BST: 3 h 45 min on the wall clock, 2 h 45 min in fact
        *attendance(
            "across",
            datetime(2026, 3, 29, 0, 45, tzinfo=UTC),
            departed=datetime(2026, 3, 29, 3, 30, tzinfo=UTC),
        ),
    ]
    m = site_metrics(state_of(RXN01, envelopes), SPRING)

    assert m.ed_arrivals_since_midnight == 3  # gmt, bst, across
    assert m.ed_in_department == 3  # before, gmt, bst
    assert m.ed_time_in_department["8-12h"] == 2  # gmt (11.5 h), bst (10.5 h)
    assert m.ed_time_in_department["over_12h"] == 1  # before, 12.5 h
    assert (m.ed_departures_since_midnight, m.ed_within_4h_since_midnight) == (1, 1)


def test_admissions_and_discharges_today_on_the_autumn_change_day() -> None:
    envelopes = [
        admit("today", "TST01-MED-B1-1", datetime(2026, 10, 24, 23, 30, tzinfo=UTC)),
        admit("yesterday", "TST01-MED-B1-2", datetime(2026, 10, 24, 22, 30, tzinfo=UTC)),
        admit("d-today", "TST01-MED-B1-3", datetime(2026, 10, 20, 10, tzinfo=UTC)),
        discharge("d-today", "TST01-MED-B1-3", datetime(2026, 10, 24, 23, 30, tzinfo=UTC)),
        admit("d-yesterday", "TST01-MED-B1-4", datetime(2026, 10, 20, 10, tzinfo=UTC)),
        discharge("d-yesterday", "TST01-MED-B1-4", datetime(2026, 10, 24, 22, 30, tzinfo=UTC)),
    ]
    wm = ward_metrics(state_of(SMALL, envelopes), WARD[MED], AUTUMN)
    assert (wm.admissions_today, wm.discharges_today) == (1, 1)


def test_attendance_variation_across_the_autumn_change() -> None:
    now = datetime(2026, 10, 26, 9, 0, tzinfo=UTC)  # Monday 09:00 GMT
    envelopes = [
        # today since 00:00 GMT
        *attendance("t1", datetime(2026, 10, 26, 0, 30, tzinfo=UTC)),
        *attendance("t2", datetime(2026, 10, 26, 5, 0, tzinfo=UTC)),
        *attendance("t3", datetime(2026, 10, 26, 8, 30, tzinfo=UTC)),
        # last Monday, 00:00-09:00 BST = 18 Oct 23:00Z - 19 Oct 08:00Z
        *attendance("w1", datetime(2026, 10, 18, 23, 30, tzinfo=UTC)),  # 00:30 BST Monday: counts
        *attendance("w2", datetime(2026, 10, 19, 7, 30, tzinfo=UTC)),  # 08:30 BST: counts
        *attendance("w3", datetime(2026, 10, 19, 8, 30, tzinfo=UTC)),  # 09:30 BST: after the time
        *attendance("w4", datetime(2026, 10, 18, 22, 30, tzinfo=UTC)),  # 23:30 BST Sunday
    ]
    m = site_metrics(state_of(RXN01, envelopes), now)
    assert (m.ed_arrivals_since_midnight, m.ed_arrivals_same_time_last_week) == (3, 2)
    assert m.ed_attendance_variation_pct == 50.0


def test_an_assessment_stamped_ahead_of_now_does_not_move_the_patient_on_yet() -> None:
    # a source's clock may run a little ahead (ingest allows ICC_MAX_FUTURE_SKEW_SECONDS)
    envelopes = attendance(
        "early", NOW - timedelta(minutes=30), acuity=3, assessed=NOW + timedelta(minutes=2)
    )
    m = site_metrics(state_of(RXN01, envelopes), NOW)
    assert (m.ed_awaiting_assessment, m.ed_awaiting_treatment) == (1, 0)
    assert (site_metrics(state_of(RXN01, envelopes), NOW + timedelta(minutes=3)).ed_awaiting_treatment) == 1


def test_last_weeks_first_hour_survives_pruning_in_the_week_after_the_autumn_change() -> None:
    # Sunday 25 Oct 2026 had 25 hours; a week later, late on Sunday 1 Nov (GMT), last week's day
    # began 192.5 hours ago: an attendance of its first hour must still be there to count
    now = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)
    first_hour = datetime(2026, 10, 24, 23, 5, tzinfo=UTC)  # 00:05 BST on Sunday 25 Oct
    state = state_of(RXN01, attendance("w1", first_hour, departed=first_hour + timedelta(minutes=15)))
    state.prune(now)
    assert site_metrics(state, now).ed_arrivals_same_time_last_week == 1


def test_attendance_variation_across_the_spring_change() -> None:
    now = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)  # Wednesday 10:00 BST; midnight was 31 Mar 23:00Z
    envelopes = [
        *attendance("t1", datetime(2026, 3, 31, 23, 30, tzinfo=UTC)),
        *attendance("t2", datetime(2026, 4, 1, 8, 0, tzinfo=UTC)),
        # last Wednesday, 00:00-10:00 GMT
        *attendance("w1", datetime(2026, 3, 25, 0, 30, tzinfo=UTC)),
        *attendance("w2", datetime(2026, 3, 25, 9, 30, tzinfo=UTC)),  # within 10:00 GMT, past 168 h
        *attendance("w3", datetime(2026, 3, 25, 9, 50, tzinfo=UTC)),
        *attendance("w4", datetime(2026, 3, 24, 23, 30, tzinfo=UTC)),  # Tuesday
    ]
    m = site_metrics(state_of(RXN01, envelopes), now)
    assert (m.ed_arrivals_since_midnight, m.ed_arrivals_same_time_last_week) == (2, 3)
    assert m.ed_attendance_variation_pct == -33.33


# --- folding sites into a system ---------------------------------------------------------------------


def metrics(**fields: Any) -> SiteMetrics:
    return finish(SiteMetrics(as_of=NOW, **fields))


SITE_A = metrics(
    beds_total=110,
    beds_open=100,
    beds_occupied=90,
    ga_beds_open=100,
    ga_beds_occupied=90,
    escalation_beds_open=10,
    ncr_patients=18,
    ed_in_department=2,
    ed_over_12h_now=1,
    ed_arrivals_since_midnight=10,
    ed_arrivals_same_time_last_week=5,
    ed_departures_since_midnight=1,
    ed_within_4h_since_midnight=1,
    ed_seen_since_midnight=1,
    ed_median_time_to_treatment_minutes=30.0,
    ed_majors_resus_patients=16,
    ed_majors_resus_spaces=32,
    ed_longest_dta_wait_minutes=120.0,
    ed_time_in_department={"0-1h": 1, "over_12h": 1},
    handovers_since_midnight=2,
    handover_minutes_total=100.0,
    handover_hours_lost=1.17,
)
SITE_B = metrics(
    beds_total=50,
    beds_open=50,
    beds_occupied=10,
    ga_beds_open=50,
    ga_beds_occupied=10,
    escalation_beds_open=0,
    ncr_patients=0,
    ed_in_department=8,
    ed_over_12h_now=0,
    ed_arrivals_since_midnight=10,
    ed_arrivals_same_time_last_week=20,
    ed_departures_since_midnight=4,
    ed_within_4h_since_midnight=1,
    ed_seen_since_midnight=3,
    ed_median_time_to_treatment_minutes=60.0,
    ed_majors_resus_patients=20,
    ed_majors_resus_spaces=20,
    ambulance_queue=2,
    ambulance_longest_wait_minutes=45.0,
    ed_time_in_department={"0-1h": 5, "1-2h": 3},
    handovers_since_midnight=3,
    handover_minutes_total=30.0,
    handover_hours_lost=0.0,
)


def test_site_ratios_before_folding() -> None:
    assert (SITE_A.ga_occupancy_pct, SITE_B.ga_occupancy_pct) == (90.0, 20.0)
    assert (SITE_A.ed_4h_performance_pct, SITE_B.ed_4h_performance_pct) == (100.0, 25.0)
    assert (SITE_A.mean_handover_minutes, SITE_B.mean_handover_minutes) == (50.0, 10.0)
    assert (SITE_A.ed_attendance_variation_pct, SITE_B.ed_attendance_variation_pct) == (100.0, -50.0)


def test_fold_sums_counts_and_recomputes_ratios_from_the_sums() -> None:
    system = fold([SITE_A, SITE_B], NOW)

    assert (system.beds_total, system.beds_open, system.beds_occupied) == (160, 150, 100)
    assert (system.ga_beds_open, system.ga_beds_occupied) == (150, 100)
    assert system.ga_occupancy_pct == 66.67  # 100 / 150, not the mean of 90 and 20 (55)
    assert system.ed_4h_performance_pct == 40.0  # 2 / 5, not the mean of 100 and 25 (62.5)
    assert system.mean_handover_minutes == 26.0  # 130 min / 5, not the mean of 50 and 10 (30)
    assert system.ed_attendance_variation_pct == -20.0  # (20 - 25) / 25, not the mean (25)
    assert system.ed_majors_resus_occupancy_pct == 69.23  # 36 / 52, not the mean (75)
    assert system.ed_over_12h_pct == 10.0  # 1 / 10, not the mean (25)
    assert system.escalation_beds_pct_of_open == 6.67  # 10 / 150
    assert system.ncr_pct_of_occupied == 18.0  # 18 / 100
    assert system.handover_hours_lost == 1.17
    assert system.ambulance_queue == 2
    assert system.ed_time_in_department == {"0-1h": 6, "over_12h": 1, "1-2h": 3}
    assert system.as_of == NOW


def test_fold_takes_the_longest_waits_as_the_maximum() -> None:
    system = fold([SITE_A, SITE_B], NOW)
    assert system.ed_longest_dta_wait_minutes == 120.0  # only A has one
    assert system.ambulance_longest_wait_minutes == 45.0  # only B has one
    other = metrics(ed_longest_dta_wait_minutes=300.0, ambulance_longest_wait_minutes=20.0)
    assert fold([SITE_A, SITE_B, other], NOW).ed_longest_dta_wait_minutes == 300.0
    assert fold([SITE_A, SITE_B, other], NOW).ambulance_longest_wait_minutes == 45.0


def test_fold_weights_the_median_time_to_treatment_by_patients_seen() -> None:
    system = fold([SITE_A, SITE_B], NOW)
    assert system.ed_seen_since_midnight == 4
    assert system.ed_median_time_to_treatment_minutes == 52.5  # (30 x 1 + 60 x 3) / 4, not 45


def test_fold_sums_the_stale_leftovers() -> None:
    system = fold([metrics(ed_stale_attendances=2, ambulance_stale_handovers=1), SITE_B], NOW)
    assert (system.ed_stale_attendances, system.ambulance_stale_handovers) == (2, 1)
    system = fold([system, metrics(ed_stale_attendances=3)], NOW)
    assert (system.ed_stale_attendances, system.ambulance_stale_handovers) == (5, 1)


def test_fold_sums_the_wards_without_bed_data() -> None:
    system = fold([metrics(wards_without_bed_data=2), SITE_B, metrics(wards_without_bed_data=3)], NOW)
    assert system.wards_without_bed_data == 5


def test_fold_of_nothing_has_no_ratios() -> None:
    system = fold([], NOW)
    assert (system.beds_total, system.ed_in_department) == (0, 0)
    assert system.ga_occupancy_pct is None
    assert system.ed_median_time_to_treatment_minutes is None
    assert system.ed_longest_dta_wait_minutes is None


def test_fold_of_the_two_sample_sites() -> None:
    rxn01 = site_metrics(state_of(RXN01, [bed("RXN01-AMU-B1-1", BedStatus.occupied, at(9))]), NOW)
    rxn02 = site_metrics(state_of(RXN02, []), NOW)
    system = fold([rxn01, rxn02], NOW)
    assert (system.beds_total, system.beds_occupied, system.escalation_beds_open) == (562, 1, 16)
    assert system.wards_without_bed_data == 13 + 10  # RXN01's but the AMU, and all RXN02's
    assert (system.ga_beds_open, system.ed_majors_resus_spaces) == (529, 52)
    assert system.ga_occupancy_pct == 0.19  # 1 / 529


# --- OPEL ----------------------------------------------------------------------------------------------

OPEL_NOW = datetime(2026, 2, 3, 16, 0, tzinfo=UTC)
LAST_WEEK = datetime(2026, 1, 27, 0, 0, tzinfo=UTC)
GA_BEDS = [b.id for w in RXN01.wards if w.type in GA_TYPES for b in w.bed_list]


def last_week_attendance(attendance_id: str, arrived: datetime) -> list[Envelope]:
    return attendance(attendance_id, arrived, departed=arrived + timedelta(hours=1))


def quiet_site() -> SiteState:
    envelopes = [
        *handover("h1", at(15), at(15, 10)),  # 10 min
        *attendance("q1", at(13), seen=at(13, 20), departed=at(14)),  # 1 h
        *attendance("q2", at(15, 30), acuity=2, seen=at(15, 45)),
        *last_week_attendance("w1", LAST_WEEK + timedelta(hours=10)),
        *last_week_attendance("w2", LAST_WEEK + timedelta(hours=11)),
        *(bed(b, BedStatus.occupied, at(9)) for b in GA_BEDS[:10]),
    ]
    return state_of(RXN01, envelopes)


def busy_site() -> SiteState:
    envelopes: list[Envelope] = []
    for i in range(3):  # 70 min each
        envelopes += handover(f"h{i}", at(10 + i), at(11 + i, 10))
    for i in range(35):  # arrived today, majors, still here; the first five seen after 200 min
        arrived = at(4, 30 + 10 * i)
        seen = arrived + timedelta(minutes=200) if i < 5 else None
        envelopes += attendance(f"t{i}", arrived, acuity=2, seen=seen)
    for i in range(5):  # arrived yesterday afternoon: over 12 hours
        envelopes += attendance(f"y{i}", at(14, day=YESTERDAY), acuity=2)
    for i in range(3):  # 7 hours
        envelopes += attendance(f"d{i}", at(20, day=YESTERDAY), departed=at(3))
    envelopes += attendance("d3", at(1), departed=at(2))
    for i in range(10):
        envelopes += last_week_attendance(f"w{i}", LAST_WEEK + timedelta(hours=5))
    envelopes += [bed(b, BedStatus.occupied, at(9)) for b in GA_BEDS]
    envelopes += [ncr(b, True, at(10)) for b in GA_BEDS[:70]]
    return state_of(RXN01, envelopes)


def test_quiet_site_inputs_and_level() -> None:
    m = site_metrics(quiet_site(), OPEL_NOW)
    assert m.mean_handover_minutes == 10.0
    assert m.ed_4h_performance_pct == 100.0
    assert m.ed_attendance_variation_pct == 0.0
    assert m.ed_median_time_to_treatment_minutes == 17.5
    assert m.ed_over_12h_pct == 0.0
    assert m.ga_occupancy_pct == 3.05  # 10 / 328
    assert m.ncr_pct_of_occupied == 0.0

    result = score_site(PROFILE, m.opel_inputs())

    assert result.missing == []
    assert {line.parameter_id: line.score for line in result.breakdown} == {
        "handover": 1,
        "four_hour": 1,
        "attendance_variation": 1,
        "majors_resus": 1,
        "time_to_treatment": 1,
        "over_12h": 1,
        "ga_occupancy": 1,
        "escalation_beds": 2,  # 10 escalation beds of 352 open: 2.84 %
        "ncr": 1,
    }
    assert result.score_pct == pytest.approx(100 / 30)
    assert result.level == 1


def test_busy_site_inputs_and_level() -> None:
    m = site_metrics(busy_site(), OPEL_NOW)
    assert m.mean_handover_minutes == 70.0
    assert m.ed_4h_performance_pct == 25.0  # 1 of 4
    assert (m.ed_arrivals_since_midnight, m.ed_arrivals_same_time_last_week) == (36, 10)
    assert m.ed_attendance_variation_pct == 260.0
    assert m.ed_majors_resus_occupancy_pct == 125.0  # 40 / 32
    assert m.ed_median_time_to_treatment_minutes == 200.0
    assert m.ed_over_12h_pct == 12.5  # 5 / 40
    assert m.ga_occupancy_pct == 100.0
    assert m.ncr_pct_of_occupied == 21.34  # 70 / 328

    result = score_site(PROFILE, m.opel_inputs())

    assert {line.parameter_id: line.score for line in result.breakdown} == {
        "handover": 4,
        "four_hour": 4,
        "attendance_variation": 4,
        "majors_resus": 4,
        "time_to_treatment": 4,
        "over_12h": 4,
        "ga_occupancy": 4,
        "escalation_beds": 2,
        "ncr": 4,
    }
    assert result.score_pct == pytest.approx(100 * 28 / 30)
    assert result.level == 4


def test_a_busy_site_scores_a_higher_opel_level_than_a_quiet_one() -> None:
    quiet = score_site(PROFILE, site_metrics(quiet_site(), OPEL_NOW).opel_inputs())
    busy = score_site(PROFILE, site_metrics(busy_site(), OPEL_NOW).opel_inputs())
    assert quiet.level is not None and busy.level is not None
    assert busy.level > quiet.level


def test_leftovers_are_no_opel_input_and_change_none() -> None:
    """A majors patient and an ambulance from days ago, never finished, score nothing: the quiet site
    keeps its level (counted, the patient would be 1 of 2 over 12 hours, and the queue longer)."""
    state = quiet_site()
    long_ago = OPEL_NOW - timedelta(days=4)
    for envelope in (*attendance("left", long_ago, acuity=2), *handover("h9", long_ago)):
        state.apply(envelope)
    m, quiet = site_metrics(state, OPEL_NOW), site_metrics(quiet_site(), OPEL_NOW)

    assert (m.ed_stale_attendances, m.ambulance_stale_handovers) == (1, 1)
    assert score_site(PROFILE, m.opel_inputs()) == score_site(PROFILE, quiet.opel_inputs())
    assert m.model_copy(update={"ed_stale_attendances": 0, "ambulance_stale_handovers": 0}) == quiet
    assert not {"ed_stale_attendances", "ambulance_stale_handovers"} & KNOWN_METRICS


def test_wards_without_bed_data_is_no_opel_input() -> None:
    """Data quality, not pressure: no profile may score it."""
    assert "wards_without_bed_data" not in KNOWN_METRICS
    with pytest.raises(ValidationError, match="unknown metric 'wards_without_bed_data'"):
        Parameter(
            id="unreported",
            metric="wards_without_bed_data",
            label="Wards without bed data",
            direction="higher_is_worse",
            thresholds=[1, 2, 3],
            weight=1,
        )


def test_an_empty_site_has_too_little_data_for_a_level() -> None:
    result = score_site(PROFILE, site_metrics(state_of(RXN01, []), OPEL_NOW).opel_inputs())
    # only majors/resus (0 of 32), G&A occupancy and escalation beds have values
    assert result.parameters_with_data == 3
    assert result.level is None
