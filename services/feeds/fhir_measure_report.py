"""Bed capacity as a FHIR MeasureReport with the SANER (Situational Awareness for Novel Epidemic
Response) population codes. Pure functions.

fhir.resources 8 has no R4 package; its R4B models are used (R4B changed nothing in MeasureReport,
so the JSON produced is valid R4). Only what ICC knows is reported: all beds, open (staffed,
including escalation) inpatient beds, occupied beds, and critical care as the ICU populations.
Ventilators, COVID-19 encounters and overflow patients are not measured by ICC and are omitted.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.measurereport import MeasureReport

SANER_MEASURE = "http://hl7.org/fhir/uv/saner/Measure/CDCPatientImpactAndHospitalCapacity"
MEASURED_VALUES = "http://hl7.org/fhir/uv/saner/CodeSystem/MeasuredValues"
MEASURE_GROUPS = "http://hl7.org/fhir/uv/saner/CodeSystem/MeasureGroupSystem"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"

# SANER population code → (display, ICC metric). SANER spells the inpatient-bed code `numbeds`.
BED_POPULATIONS: tuple[tuple[str, str, str], ...] = (
    ("numTotBeds", "All Hospital Beds", "beds_total"),
    ("numbeds", "Hospital Inpatient Beds", "beds_open"),
    ("numBedsOcc", "Hospital Inpatient Bed Occupancy", "beds_occupied"),
    ("numICUBeds", "ICU Beds", "cc_beds_open"),
    ("numICUBedsOcc", "ICU Bed Occupancy", "cc_beds_occupied"),
)


def _population(code: str, display: str, count: int) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": MEASURED_VALUES, "code": code, "display": display}]},
        "count": count,
    }


def measure_report(
    *,
    scope: str,
    name: str,
    system_id: str,
    metrics: Mapping[str, Any],
    as_of: str,
    report_id: str | None = None,
) -> dict[str, Any]:
    """A SANER bed-capacity MeasureReport of one site or system, validated, as FHIR JSON."""
    tier, _, ident = scope.partition(":")
    populations = [
        _population(code, display, int(metrics.get(metric) or 0)) for code, display, metric in BED_POPULATIONS
    ]
    resource: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "id": report_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"icc:{scope}:{as_of}")),
        "status": "complete",
        "type": "summary",
        "measure": SANER_MEASURE,
        "subject": {
            "identifier": {"system": ODS, "value": ident},
            "display": name,
        },
        "date": as_of,
        "reporter": {"identifier": {"system": ODS, "value": system_id}},
        "period": {"start": as_of, "end": as_of},
        "group": [
            {
                "code": {
                    "coding": [{"system": MEASURE_GROUPS, "code": "Beds", "display": "Beds"}],
                    "text": f"Hospital bed capacity of {tier} {ident}",
                },
                "population": populations,
            }
        ],
    }
    # validation refuses a malformed resource here rather than at the receiving ICB
    return MeasureReport.model_validate(resource).model_dump(mode="json", exclude_none=True)
