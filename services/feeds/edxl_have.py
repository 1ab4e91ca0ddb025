"""Hospital availability as OASIS EDXL-HAVE 2.0 XML (bed capacity by bed type, ED status). Pure.

No XSD is shipped with ICC; the element names and their order follow the HAVE 2.0 specification as
described in docs/feeds.md, and the unit tests check that structure. Counts come from the site
metrics: G&A beds are reported as MedicalSurgical, critical-care beds as AdultICU.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HAVE_NS = "urn:oasis:names:tc:emergency:EDXL:HAVE:2.0"
CONTENT_TYPE = "application/xml"

# HAVE bed type → (ICC metric of open beds, ICC metric of occupied beds)
BED_TYPES: tuple[tuple[str, str, str], ...] = (
    ("MedicalSurgical", "ga_beds_open", "ga_beds_occupied"),
    ("AdultICU", "cc_beds_open", "cc_beds_occupied"),
)

ET.register_namespace("have", HAVE_NS)


@dataclass(frozen=True)
class HospitalFigures:
    site_id: str
    name: str
    metrics: Mapping[str, Any] | None
    effective_level: int | None
    as_of: str


def _el(parent: ET.Element, name: str, text: object | None = None) -> ET.Element:
    child = ET.SubElement(parent, f"{{{HAVE_NS}}}{name}")
    if text is not None:
        child.text = str(text)
    return child


def ems_traffic(level: int | None) -> tuple[str, str]:
    """HAVE EMSTrafficStatus from the effective OPEL level (ICC never closes an ED itself)."""
    if level is None:
        return "NotApplicable", "No OPEL level yet"
    return ("Normal" if level <= 2 else "Advisory"), f"OPEL {level}"


def _hospital(root: ET.Element, figures: HospitalFigures) -> None:
    metrics = figures.metrics or {}
    hospital = _el(root, "Hospital")
    organisation = _el(hospital, "Organisation")
    info = _el(organisation, "OrganisationInformation")
    _el(info, "OrganisationName", figures.name)
    _el(info, "OrganisationID", figures.site_id)

    ed = _el(hospital, "EmergencyDepartmentStatus")
    traffic = _el(ed, "EMSTraffic")
    status, reason = ems_traffic(figures.effective_level)
    _el(traffic, "EMSTrafficStatus", status)
    _el(traffic, "EMSTrafficReason", reason)
    census = _el(ed, "EMSCensus")
    _el(census, "EMSCensusCount", int(metrics.get("ed_in_department") or 0))
    _el(census, "EMSAmbulanceQueueCount", int(metrics.get("ambulance_queue") or 0))

    beds = _el(hospital, "HospitalBedCapacityStatus")
    for bed_type, open_metric, occupied_metric in BED_TYPES:
        open_beds = int(metrics.get(open_metric) or 0)
        available = max(open_beds - int(metrics.get(occupied_metric) or 0), 0)
        capacity_entry = _el(beds, "BedCapacity")
        _el(capacity_entry, "BedType", bed_type)
        capacity = _el(capacity_entry, "Capacity")
        _el(capacity, "CapacityStatus", "VacantAvailable" if available else "NotAvailable")
        _el(capacity, "AvailableCount", available)
        _el(capacity, "BaselineCount", open_beds)
    _el(hospital, "LastUpdateTime", figures.as_of)


def hospital_status(hospitals: Iterable[HospitalFigures]) -> bytes:
    """One HospitalStatus document with a Hospital per site."""
    root = ET.Element(f"{{{HAVE_NS}}}HospitalStatus")
    for figures in hospitals:
        _hospital(root, figures)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document
