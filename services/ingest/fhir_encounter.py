"""FHIR R4 Encounter → canonical patient-movement and ED events. Pure: no I/O.

An Encounter says where a patient *is*; the events say what *changed*. So the mapping needs what
ICC last knew of the encounter (`KnownEncounter`: status, class, location), and returns the new
knowledge with the events. The caller keeps it (fhir_encounter_state) in the same transaction.

- inpatient, planned → patient.preadmitted
- inpatient, arrived / triaged / in-progress → patient.admitted (first time, or after planned);
  patient.transferred when the active location changed; patient.leave ended when back from leave
- inpatient, onleave → patient.leave started
- inpatient, finished → patient.discharged (reason from hospitalization.dischargeDisposition)
- inpatient, cancelled / entered-in-error → patient.admission_cancelled
- emergency, arrived → ed.arrived
- emergency, triaged → ed.arrived (unless arrived already) + ed.assessed when priority is an ECDS acuity
- emergency, in-progress → patient.admitted from ED when the active location is an inpatient ward
  (patient.transferred after that), else ed.arrived unless arrived already
- emergency, finished → ed.departed (disposition from hospitalization.dischargeDisposition)

Inpatient classes (v3 ActCode): IMP, ACUTE, NONAC, OBSENC, SS, PRENC; emergency: EMER. Other classes
(ambulatory, virtual, home health) do not use beds: accepted and ignored. A version that repeats
what is known produces no event; an older numeric version than the last seen is stale and ignored.

Event times come from meta.lastUpdated, period.start / end and the location's period.start (ICC's
time of receipt when none is sent); one out of the bounds of `event_time_bounds` refuses the version.
A location the mapping lacks is reported (`Mapped.unmapped`) to be counted and listed like HL7's.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Literal

from services.ingest.ed_events import ACUITY_SNOMED, SNOMED
from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.fhir_validation import EncounterFacts, Issue
from services.ingest.hl7_adt import UnmappedKind, UnmappedLocation
from services.ingest.patient_ids import patient_pseudonym
from shared import topics
from shared.events import (
    AdmissionCancelled,
    EdArrived,
    EdAssessed,
    EdDeparted,
    Envelope,
    LeaveOfAbsence,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientTransferred,
    Payload,
    name_based_id,
)
from shared.location_map import LocationMapper
from shared.outbox import OutboxEvent
from shared.pseudonymise import IdKind, keyed_mac, pseudonymise

_NAMESPACE = uuid.UUID("5d1e6b7a-0c2f-4e8b-a3d4-9f0e1c2b3a45")
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "OBSENC", "SS", "PRENC"})
EMERGENCY_CLASSES = frozenset({"EMER"})
_CODE_SHAPED = re.compile(r"^[A-Za-z0-9._\-^]+$")

EncounterClass = Literal["inpatient", "emergency"]
Outcome = Literal["accepted", "no-change", "ignored", "stale"]

# hospitalization.dischargeDisposition (HL7 discharge-disposition code system) → canonical values
_DISCHARGE_REASON: dict[str, Literal["discharged", "died", "transferred_out"]] = {
    "home": "discharged",
    "alt-home": "discharged",
    "snf": "transferred_out",
    "rehab": "transferred_out",
    "long": "transferred_out",
    "psy": "transferred_out",
    "hosp": "transferred_out",
    "other-hcf": "transferred_out",
    "exp": "died",
}
_ED_DISPOSITION: dict[str, Literal["discharged", "transferred", "left_before_treatment", "died"]] = {
    "home": "discharged",
    "alt-home": "discharged",
    "hosp": "transferred",
    "other-hcf": "transferred",
    "snf": "transferred",
    "rehab": "transferred",
    "psy": "transferred",
    "long": "transferred",
    "aadvice": "left_before_treatment",
    "exp": "died",
}
_ARRIVED = frozenset({"arrived", "triaged", "in-progress", "onleave"})
_CLOSED = frozenset({"finished", "cancelled", "entered-in-error"})


@dataclass(frozen=True)
class KnownEncounter:
    site_id: str
    encounter_class: EncounterClass
    status: str
    location: Location | None
    version_id: str


@dataclass
class Mapped:
    outcome: Outcome
    events: list[OutboxEvent] = field(default_factory=list)
    known: KnownEncounter | None = None
    warnings: list[Issue] = field(default_factory=list)
    unmapped: list[UnmappedLocation] = field(default_factory=list)


class Unmappable(Exception):
    """No site can be told for this Encounter, or an event time is impossible: the version is
    rejected (and kept in the quarantine)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(issue.diagnostics)
        self.issue = issue


def encounter_class(facts: EncounterFacts) -> EncounterClass | None:
    code = (facts.class_code or "").upper()
    if code in INPATIENT_CLASSES:
        return "inpatient"
    if code in EMERGENCY_CLASSES:
        return "emergency"
    return None


def encounter_key(key: str, source: str, facts: EncounterFacts) -> str:
    """Pseudonymous identity of the resource at this source (what idempotency and state are kept by).

    Keyed like the pseudonyms but over the exact id: `pseudonymise` normalises away punctuation
    (right for NHS numbers), and FHIR ids `a-1` and `a1` are different resources.
    """
    ident = (
        f"{source}|Encounter/{facts.resource_id}" if facts.resource_id else f"{source}|V/{facts.visit_number}"
    )
    return "fhir:" + keyed_mac(key, ident.encode()).hex()[:32]


def acuity_of_priority(facts: EncounterFacts) -> int | None:
    for system, code in facts.priority.codings:
        if system in (SNOMED, "") and code in ACUITY_SNOMED:
            return ACUITY_SNOMED[code]
    return None


def _locate(
    facts: EncounterFacts, known: KnownEncounter | None, mapper: LocationMapper
) -> tuple[str, Location | None, list[Issue], list[UnmappedLocation]]:
    """The site, the active location (None when the Encounter names none), warnings, and what of the
    location the mapping lacks (told apart as HL7's PV1-3 is: facility, else ward, else bed)."""
    warnings: list[Issue] = []
    raw = facts.location_code or facts.location_display
    if raw is not None and not facts.location_code and not _CODE_SHAPED.match(raw):
        # a free-text display is never copied into an event
        warnings.append(
            Issue(
                "code-invalid",
                "the active location has only a free-text display; send location.identifier.value "
                "as point-of-care^room^bed^facility",
                facts.location_expression,
                "warning",
            )
        )
        raw = None
    parts = [*raw.split("^"), "", "", ""][:4] if raw else ["", "", "", ""]
    point_of_care, room, bed, facility = (p.strip() for p in parts)
    site = mapper.site_for_facility(facility) if facility else None
    if site is None and facts.provider_code:
        site = mapper.site_for_facility(facts.provider_code)
    if site is None and known is not None:
        site = known.site_id
    if site is None:
        where = facts.location_expression or "Encounter.location"
        if facility:
            detail = f"facility {facility!r} of location {raw!r} is not a site of the organisation model"
        else:
            detail = (
                "no site: send the facility in the location (point-of-care^room^bed^facility) "
                "or in serviceProvider"
            )
        raise Unmappable(
            Issue("code-invalid", f"{detail} (add an alias to the location map, then replay)", where)
        )
    if raw is None:
        return site, None, warnings, []
    lacking: tuple[UnmappedKind, str] | None = None
    if facility and mapper.site_for_facility(facility) is None:
        location = Location(pas_code=raw)
        lacking = ("facility", facility)
    else:
        location = mapper.map(point_of_care, room, bed, "", default_site=site)
        location = Location(ward_id=location.ward_id, bed_id=location.bed_id, pas_code=raw)
        if location.ward_id is None and point_of_care:
            lacking = ("ward", point_of_care)
        elif location.ward_id is not None and location.bed_id is None and room and bed:
            lacking = ("bed", f"{point_of_care}^{room}^{bed}")
    unmapped = (
        [
            UnmappedLocation(
                site, lacking[0], lacking[1].upper(), raw, facts.location_expression or "Encounter.location"
            )
        ]
        if lacking is not None
        else []
    )
    if not location.mapped:
        warnings.append(
            Issue(
                "code-unknown",
                f"location {raw!r} is not in the location map: accepted and counted as unmapped",
                facts.location_expression,
                "warning",
            )
        )
    elif unmapped:
        warnings.append(
            Issue(
                "code-unknown",
                f"bed {raw!r} is not in the location map (its ward is): accepted and counted as unmapped",
                facts.location_expression,
                "warning",
            )
        )
    return site, location, warnings, unmapped


def _newer_or_same(version: str, known: KnownEncounter | None) -> bool:
    if known is None or not (version.isdigit() and known.version_id.isdigit()):
        return True
    return int(version) >= int(known.version_id)


def map_encounter(
    facts: EncounterFacts,
    known: KnownEncounter | None,
    mapper: LocationMapper,
    *,
    key: str,
    source: str,
    version_id: str,
    received_at: dt.datetime,
    bounds: EventTimeBounds | None = None,
) -> Mapped:
    """The events this version of the Encounter means, given what was known before it.

    `received_at` is when ICC received the message: the event time when the Encounter sends none,
    and what the event times are bounded by (unless other `bounds` are given).
    """
    kind = encounter_class(facts)
    if kind is None:
        return Mapped("ignored", known=known)
    if not _newer_or_same(version_id, known):
        return Mapped("stale", known=known)
    site, location, warnings, unmapped = _locate(facts, known, mapper)
    state_key = encounter_key(key, source, facts)
    visit = facts.visit_number or f"Encounter/{facts.resource_id}"
    entity = pseudonymise(key, IdKind.encounter, visit, issuer=facts.visit_system or source)
    patient = patient_pseudonym(
        key, nhs_number=facts.nhs_number, mrn=facts.mrn, mrn_issuer=facts.mrn_system or source
    )
    if patient is None and facts.patient_reference:
        patient = pseudonymise(key, IdKind.mrn, facts.patient_reference, issuer=f"fhir:{source}")
    when = _sent(facts.last_updated, "Encounter.meta.lastUpdated", _At(received_at))
    started = _sent(facts.period_start, "Encounter.period.start", when)
    ended = _sent(facts.period_end, "Encounter.period.end", when)
    moved_at = _sent(facts.location_start, _location_period_start(facts), when)
    previous = known.location if known is not None else None
    current = location if location is not None else previous
    specialty = facts.service_type.text or facts.service_type.first_code()
    status = facts.status
    before = known.status if known is not None else None
    came_from_ed = (known is not None and known.encounter_class == "emergency") or "emd" in {
        code for _, code in facts.admit_source.codings
    }
    payloads: list[tuple[Payload, str, _At]] = []
    enc: dict[str, str | None] = {"encounter_id": entity, "patient_id": patient}
    att: dict[str, str | None] = {}
    if kind == "emergency":
        att = {
            "attendance_id": pseudonymise(key, IdKind.attendance, visit, issuer=facts.visit_system or source),
            "patient_id": patient,
        }
    beds, ed = topics.BEDS.name, topics.EDFLOW.name

    if kind == "inpatient":
        if status == "planned":
            if before != "planned":
                payloads.append(
                    (
                        PatientPreadmitted(
                            **enc,
                            location=location,
                            expected_admit_at=facts.period_start,
                            specialty=specialty,
                        ),
                        beds,
                        when,
                    )
                )
        elif status in ("arrived", "triaged", "in-progress"):
            here = current or Location()
            if (
                before is None
                or before not in _ARRIVED
                or (known is not None and known.encounter_class != kind)
            ):
                payloads.append(
                    (
                        PatientAdmitted(**enc, location=here, specialty=specialty, from_ed=came_from_ed),
                        beds,
                        _sent(facts.location_start, _location_period_start(facts), started),
                    )
                )
            else:
                if before == "onleave":
                    payloads.append((LeaveOfAbsence(**enc, state="ended", location=here), beds, when))
                if location is not None and location != previous:
                    payloads.append(
                        (PatientTransferred(**enc, location=location, previous=previous), beds, moved_at)
                    )
        elif status == "onleave":
            if before != "onleave":
                payloads.append((LeaveOfAbsence(**enc, state="started", location=current), beds, when))
        elif status == "finished":
            if before != "finished":
                reason = _DISCHARGE_REASON.get(facts.discharge_disposition.first_code() or "", "discharged")
                payloads.append(
                    (
                        PatientDischarged(**enc, location=current, reason=reason),
                        beds,
                        ended,
                    )
                )
        elif status in ("cancelled", "entered-in-error"):
            if before not in ("cancelled", "entered-in-error"):
                payloads.append((AdmissionCancelled(**enc, location=current), beds, when))
        else:  # unknown
            return Mapped("ignored", known=known, warnings=warnings, unmapped=unmapped)
    else:
        arrived_before = before in _ARRIVED or before == "finished"
        if status in ("arrived", "triaged") or (
            status == "in-progress" and not (location and location.mapped)
        ):
            if not arrived_before:
                payloads.append((EdArrived(**att), ed, started))
            acuity = acuity_of_priority(facts)
            if status == "triaged" and before != "triaged" and acuity is not None:
                payloads.append((EdAssessed(**att, acuity=acuity), ed, when))
        elif status == "in-progress":
            # an emergency encounter now in an inpatient ward: admitted from ED (HL7 A06)
            assert location is not None
            if previous is not None and previous.mapped and location != previous:
                payloads.append(
                    (PatientTransferred(**enc, location=location, previous=previous), beds, moved_at)
                )
            elif location != previous:
                payloads.append(
                    (
                        PatientAdmitted(**enc, location=location, specialty=specialty, from_ed=True),
                        beds,
                        moved_at,
                    )
                )
        elif status == "finished":
            if before != "finished":
                disposition = _ED_DISPOSITION.get(facts.discharge_disposition.first_code() or "", "other")
                payloads.append((EdDeparted(**att, disposition=disposition), ed, ended))
        else:  # planned, onleave, cancelled, entered-in-error, unknown: no ED milestone
            return Mapped("ignored", known=known, warnings=warnings, unmapped=unmapped)

    bounds = bounds or EventTimeBounds.at_receipt(received_at)
    for _, _, at in payloads:
        refusal = bounds.refusal(at.time)
        if refusal is not None:
            where = at.expression or "Encounter"
            raise Unmappable(Issue("value", f"{where} (the event time): {refusal}", at.expression))
    new_known = KnownEncounter(site, kind, status, current, version_id)
    events = [
        _outbox(
            payload,
            topic,
            occurred_at.time,
            source=source,
            site=site,
            entity=entity,
            event_id=_event_id(state_key, version_id, n),
        )
        for n, (payload, topic, occurred_at) in enumerate(payloads)
    ]
    return Mapped("accepted" if events else "no-change", events, new_known, warnings, unmapped)


@dataclass(frozen=True)
class _At:
    """An event time and the element it was read from (None: ICC's time of receipt)."""

    time: dt.datetime
    expression: str | None = None


def _sent(value: dt.datetime | None, expression: str, otherwise: _At) -> _At:
    return _At(value, expression) if value is not None else otherwise


def _location_period_start(facts: EncounterFacts) -> str:
    """`Encounter.location[i].period.start` of the active location (its expression names the entry)."""
    entry = (facts.location_expression or "Encounter.location").partition(".location.")[0]
    return f"{entry}.period.start"


def _event_id(state_key: str, version_id: str, n: int) -> uuid.UUID:
    return name_based_id(_NAMESPACE, f"{state_key}|{version_id}|{n}")


def _outbox(
    payload: Payload,
    topic: str,
    occurred_at: dt.datetime,
    *,
    source: str,
    site: str,
    entity: str,
    event_id: uuid.UUID,
) -> OutboxEvent:
    envelope = Envelope.wrap(
        payload, event_id=event_id, occurred_at=occurred_at, source=source, site_id=site, entity_id=entity
    )
    return OutboxEvent(envelope.event_id, topic, site, envelope.to_json(), envelope.event_type)


def known_from_row(row: dict[str, object]) -> KnownEncounter:
    location = row.get("location")
    return KnownEncounter(
        site_id=str(row["site_id"]),
        encounter_class="emergency" if row["encounter_class"] == "emergency" else "inpatient",
        status=str(row["status"]),
        location=Location.model_validate(location) if location is not None else None,
        version_id=str(row["version_id"]),
    )
