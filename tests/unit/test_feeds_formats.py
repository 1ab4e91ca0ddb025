"""Feed formats: the pressure view, the SANER MeasureReport (validated with fhir.resources R4B), the
EDXL-HAVE 2.0 document's structure, the CSV export and the push policy's pure parts."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.measurereport import MeasureReport

from services.feeds.csv_export import Declaration, declared_at, to_csv
from services.feeds.edxl_have import HAVE_NS, HospitalFigures, ems_traffic, hospital_status
from services.feeds.fhir_measure_report import MEASURED_VALUES, SANER_MEASURE, measure_report
from services.feeds.pressure import Escalations, ScopeSnapshot, etag, site_pressure, system_pressure
from services.feeds.push import is_due, passes_filters, retry_delay
from shared.organisation import Organisation

pytestmark = pytest.mark.unit

AS_OF = "2026-11-26T09:30:00+00:00"
METRICS: dict[str, Any] = {
    "beds_total": 320,
    "beds_open": 300,
    "beds_occupied": 281,
    "beds_available": 15,
    "beds_closed": 20,
    "escalation_beds_open": 6,
    "ga_beds_open": 270,
    "ga_beds_occupied": 256,
    "ga_occupancy_pct": 94.81,
    "cc_beds_open": 30,
    "cc_beds_occupied": 25,
    "cc_occupancy_pct": 83.33,
    "ncr_patients": 40,
    "ncr_pct_of_occupied": 14.23,
    "ed_in_department": 55,
    "ambulance_queue": 4,
    "mean_handover_minutes": 41.5,
    "handovers_over_60": 2,
}
SITE_OPEL = {
    "computed": {
        "profile_id": "p",
        "profile_version": "1",
        "level": 3,
        "score_pct": 55.0,
        "breakdown": [{"parameter_id": "handover", "value": 41.5, "score": 3}],
        "missing": [],
    },
    "declared": None,
    "effective_level": 3,
}


def _site(scope: str = "site:RXN01", version: int = 7) -> ScopeSnapshot:
    return ScopeSnapshot(scope, version, {"as_of": AS_OF, "metrics": METRICS, "opel": SITE_OPEL})


def _el(name: str) -> str:
    return f"{{{HAVE_NS}}}{name}"


def test_site_pressure_groups_the_figures(org: Organisation) -> None:
    view = site_pressure(org, _site(), Escalations({"ward": 2, "site": 1, "system": 0}, True))
    assert view["site_id"] == "RXN01" and view["version"] == 7 and view["as_of"] == AS_OF
    assert view["opel"]["computed_level"] == 3 and view["opel"]["effective_level"] == 3
    assert view["opel"]["breakdown"][0]["parameter_id"] == "handover"
    assert view["beds"]["general_and_acute"] == {"open": 270, "occupied": 256, "occupancy_pct": 94.81}
    assert view["beds"]["critical_care"]["occupancy_pct"] == 83.33
    assert view["beds"]["escalation_beds_open"] == 6
    assert view["no_criteria_to_reside"]["patients"] == 40
    assert view["handover"]["mean_minutes"] == 41.5 and view["ed"]["in_department"] == 55
    assert view["escalations"] == {
        "open_by_tier": {"ward": 2, "site": 1, "system": 0},
        "source_available": True,
    }


def test_system_pressure_lists_sites_and_sums_escalations(org: Organisation) -> None:
    system = ScopeSnapshot(
        "system:QXN",
        3,
        {
            "as_of": AS_OF,
            "metrics": METRICS,
            "opel": {
                "computed": {"level": 2, "score_pct": 30.0, "sites": [{"site_id": "RXN01"}], "excluded": []},
                "declared": {"level": 3},
                "effective_level": 3,
            },
        },
    )
    sites = {"RXN01": _site(), "RXN02": ScopeSnapshot("site:RXN02", 0, None)}
    escalations = {
        "RXN01": Escalations({"ward": 1, "site": 0, "system": 0}, True),
        "RXN02": Escalations({"ward": 0, "site": 2, "system": 0}, True),
    }
    view = system_pressure(org, system, sites, escalations)
    assert view["system_id"] == "QXN" and view["opel"]["effective_level"] == 3
    assert view["opel"]["site_contributions"] == [{"site_id": "RXN01"}]
    assert [s["site_id"] for s in view["sites"]] == ["RXN01", "RXN02"]
    assert view["sites"][1]["reported"] is False and view["sites"][1]["beds"]["total"] is None
    assert view["escalations"]["open_by_tier"] == {"ward": 1, "site": 2, "system": 0}


def test_escalations_report_zero_and_say_so_without_a_store(org: Organisation) -> None:
    view = site_pressure(org, _site())
    assert view["escalations"] == {
        "open_by_tier": {"ward": 0, "site": 0, "system": 0},
        "source_available": False,
    }


def test_etag_follows_versions_and_representation() -> None:
    one = etag("json", [_site(version=1)])
    assert one.startswith('W/"') and one == etag("json", [_site(version=1)])
    assert one != etag("json", [_site(version=2)])
    assert one != etag("fhir", [_site(version=1)])
    assert one != etag("json", [_site(version=1)], "RXN01:ward=1")


def test_measure_report_validates_and_carries_the_saner_bed_counts() -> None:
    report = measure_report(
        scope="site:RXN01", name="Northgate", system_id="QXN", metrics=METRICS, as_of=AS_OF
    )
    parsed = MeasureReport.model_validate(report)  # fhir.resources R4B: MeasureReport as in R4
    assert parsed.status == "complete" and parsed.type == "summary"
    assert report["measure"] == SANER_MEASURE
    assert report["subject"]["identifier"]["value"] == "RXN01"
    (group,) = report["group"]
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
    assert counts == {
        "numTotBeds": 320,
        "numbeds": 300,
        "numBedsOcc": 281,
        "numICUBeds": 30,
        "numICUBedsOcc": 25,
    }
    assert {p["code"]["coding"][0]["system"] for p in group["population"]} == {MEASURED_VALUES}


def test_measure_report_of_a_scope_without_data_counts_zero() -> None:
    report = measure_report(scope="site:RXN02", name="Riverside", system_id="QXN", metrics={}, as_of=AS_OF)
    assert {p["count"] for p in report["group"][0]["population"]} == {0}


def test_edxl_have_structure_and_order() -> None:
    document = hospital_status(
        [
            HospitalFigures("RXN01", "Northgate General Hospital", METRICS, 3, AS_OF),
            HospitalFigures("RXN02", "Riverside District Hospital", None, None, AS_OF),
        ]
    )
    assert document.startswith(b"<?xml")
    root = ET.fromstring(document)
    assert root.tag == _el("HospitalStatus")
    hospitals = root.findall(_el("Hospital"))
    assert len(hospitals) == 2
    first = hospitals[0]
    assert [c.tag for c in first] == [
        _el("Organisation"),
        _el("EmergencyDepartmentStatus"),
        _el("HospitalBedCapacityStatus"),
        _el("LastUpdateTime"),
    ]
    assert first.findtext(
        f"{_el('Organisation')}/{_el('OrganisationInformation')}/{_el('OrganisationName')}"
    ) == ("Northgate General Hospital")
    ed = first.find(_el("EmergencyDepartmentStatus"))
    assert ed is not None and [c.tag for c in ed] == [_el("EMSTraffic"), _el("EMSCensus")]
    assert ed.findtext(f"{_el('EMSTraffic')}/{_el('EMSTrafficStatus')}") == "Advisory"
    assert ed.findtext(f"{_el('EMSCensus')}/{_el('EMSCensusCount')}") == "55"
    beds = first.find(_el("HospitalBedCapacityStatus"))
    assert beds is not None
    by_type = {}
    for entry in beds.findall(_el("BedCapacity")):
        assert [c.tag for c in entry] == [_el("BedType"), _el("Capacity")]
        capacity = entry.find(_el("Capacity"))
        assert capacity is not None
        assert [c.tag for c in capacity] == [
            _el("CapacityStatus"),
            _el("AvailableCount"),
            _el("BaselineCount"),
        ]
        by_type[entry.findtext(_el("BedType"))] = [c.text for c in capacity]
    assert by_type == {
        "MedicalSurgical": ["VacantAvailable", "14", "270"],
        "AdultICU": ["VacantAvailable", "5", "30"],
    }
    # every element is in the HAVE namespace, nothing unqualified
    assert all(e.tag.startswith(f"{{{HAVE_NS}}}") for e in root.iter())
    empty = hospitals[1]
    assert empty.findtext(
        f"{_el('EmergencyDepartmentStatus')}/{_el('EMSTraffic')}/{_el('EMSTrafficStatus')}"
    ) == ("NotApplicable")


@pytest.mark.parametrize(
    ("level", "status"),
    [(None, "NotApplicable"), (1, "Normal"), (2, "Normal"), (3, "Advisory"), (4, "Advisory")],
)
def test_ems_traffic_from_opel(level: int | None, status: str) -> None:
    assert ems_traffic(level)[0] == status


def test_csv_carries_values_forward_with_levels() -> None:
    t0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    points = [
        ("site:RXN01", "ga_occupancy_pct", t0, 90.0),
        ("site:RXN01", "mean_handover_minutes", t0, 20.0),
        ("site:RXN01", "ga_occupancy_pct", t0 + timedelta(minutes=5), 95.0),
        ("system:QXN", "ga_occupancy_pct", t0, None),
    ]
    declarations = [Declaration("site:RXN01", 4, t0 + timedelta(minutes=1), None)]
    text = to_csv(
        points,
        ["ga_occupancy_pct", "mean_handover_minutes"],
        score=lambda values: 3 if (values.get("ga_occupancy_pct") or 0) > 92 else 2,
        declarations=declarations,
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "scope",
        "at",
        "opel_computed_level",
        "opel_declared_level",
        "ga_occupancy_pct",
        "mean_handover_minutes",
    ]
    assert rows[1] == ["site:RXN01", t0.isoformat(), "2", "", "90.0", "20.0"]
    assert rows[2] == ["site:RXN01", (t0 + timedelta(minutes=5)).isoformat(), "3", "4", "95.0", "20.0"]
    assert rows[3] == ["system:QXN", t0.isoformat(), "", "", "", ""]


def test_csv_takes_the_level_kept_in_the_history_over_todays_profile() -> None:
    t0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    points = [
        ("site:RXN01", "ga_occupancy_pct", t0, 90.0),
        ("site:RXN01", "opel_computed_level", t0, 3.0),  # what the profile then in force gave
        ("site:RXN01", "opel_level", t0, 3.0),
        ("system:QXN", "opel_computed_level", t0, 2.0),
    ]
    text = to_csv(
        points,
        ["ga_occupancy_pct", "opel_computed_level", "opel_level"],
        score=lambda values: 1,  # today's profile would say 1
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["scope", "at", "opel_computed_level", "opel_declared_level", "ga_occupancy_pct"]
    assert rows[1] == ["site:RXN01", t0.isoformat(), "3", "", "90.0"]
    assert rows[2] == ["system:QXN", t0.isoformat(), "2", "", ""]  # a system's level, kept too


def test_declared_level_ends_at_expiry_or_withdrawal() -> None:
    t0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    d = [
        Declaration("site:A", 3, t0, t0 + timedelta(hours=1)),
        Declaration("site:A", 4, t0 + timedelta(minutes=10), None),
    ]
    assert declared_at(d, "site:A", t0 - timedelta(seconds=1)) is None
    assert declared_at(d, "site:A", t0) == 3
    assert declared_at(d, "site:A", t0 + timedelta(minutes=30)) == 4
    assert declared_at(d, "site:B", t0) is None


def test_retry_delay_grows_is_capped_and_jittered() -> None:
    assert retry_delay(1, base=2, cap=60, rand=lambda: 0.0) == 1.0
    assert retry_delay(1, base=2, cap=60, rand=lambda: 1.0) == 2.0
    assert retry_delay(4, base=2, cap=60, rand=lambda: 1.0) == 16.0
    assert retry_delay(20, base=2, cap=60, rand=lambda: 1.0) == 60.0
    assert 30.0 <= retry_delay(20, base=2, cap=60) <= 60.0


def test_due_on_change_and_by_interval() -> None:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    on_change = {"cadence": "on_change", "last_versions": {"system:QXN": 1}, "last_queued_at": now}
    assert not is_due(on_change, {"system:QXN": 1}, now)
    assert is_due(on_change, {"system:QXN": 2}, now)
    assert not is_due({**on_change, "last_versions": None}, {"system:QXN": 0}, now)  # nothing published yet
    every_5 = {"cadence": "interval", "interval_minutes": 5, "last_queued_at": now, "last_versions": None}
    assert not is_due(every_5, {}, now + timedelta(minutes=4))
    assert is_due(every_5, {}, now + timedelta(minutes=5))
    assert is_due({**every_5, "last_queued_at": None}, {}, now)


def test_level_filter() -> None:
    view = {"opel": {"effective_level": 3}}
    assert passes_filters({}, view)
    assert passes_filters({"min_effective_level": 3}, view)
    assert not passes_filters({"min_effective_level": 4}, view)
    assert not passes_filters({"min_effective_level": 1}, {"opel": {"effective_level": None}})
