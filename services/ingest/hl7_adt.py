"""ADT semantics → canonical events. Pure: no I/O; the location mapper and the pseudonymiser are given.

One message gives zero or more envelopes (an A17 swap gives exactly one `patient.swapped`, so the
two moves are applied together or not at all). Patient and bed events go to `icc.beds.v1`, an A04
emergency registration goes to `icc.edflow.v1` as `ed.arrived`; all are keyed by the site.

- Identifiers: NHS number (PID-3 of type NH) or else MRN (type MR), and the visit number (PV1-19),
  become keyed HMACs here; nothing else about the patient is read.
- Locations (PV1-3, PV1-6, NPU-1) go through the organisation's location mapping. A code that does
  not map is kept as sent in `pas_code`, left unmapped (never guessed) and reported so that it can
  be counted and listed.
- `occurred_at` is the source's time: EVN-6 (event occurred), else EVN-2 (recorded), else PV1-44
  (admit) / PV1-45 (discharge) where the trigger is about that, else MSH-7. A time out of the
  bounds of `event_time_bounds` (far ahead of receipt, or before 1990) is an AE naming that field.
- Event ids derive from (source, control id, content hash, position): a message processed twice
  gives the same ids, which the outbox ignores the second time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.hl7_er7 import (
    AdtMessage,
    ErrorCode,
    ErrorLocation,
    Hl7Error,
    PatientLocation,
    Visit,
    error,
)
from shared import topics
from shared.events import (
    AdmissionCancelled,
    BedStatus,
    BedStatusChanged,
    DischargeCancelled,
    EdArrived,
    Envelope,
    LeaveOfAbsence,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientsSwapped,
    PatientTransferred,
    PatientUpdated,
    Payload,
    SwapSide,
    TemporaryMove,
    TransferCancelled,
    name_based_id,
)
from shared.location_map import LocationMapper
from shared.outbox import OutboxEvent
from shared.pseudonymise import IdKind

# Kafka key of events whose site cannot be told from PV1-3.4 nor from the sending facility (MSH-4).
UNMAPPED_SITE = "unmapped"
# Patient classes (PV1-2, HL7 table 0004) that make an A04 an ED arrival; '' is "not stated".
EMERGENCY_CLASSES = frozenset({"E", ""})
# PV2-38 mode of arrival (HL7 table 0430) → the ED arrival mode.
ARRIVAL_MODES: dict[str, Literal["ambulance", "walk_in", "other"]] = {
    "A": "ambulance",
    "H": "ambulance",
    "F": "walk_in",
    "C": "walk_in",
    "P": "walk_in",
}
_EVENT_NAMESPACE = uuid.UUID("6b0c6f0e-8f4a-4d53-b1a4-2f0d7c9e5a31")

Pseudonymiser = Callable[[IdKind, str, str], str]
"""(kind, identifier, issuer) → pseudonym; `shared.pseudonymise.pseudonymise` with the key bound."""

UnmappedKind = Literal["facility", "ward", "bed"]
Note = Literal[
    "site_from_sending_facility",  # PV1-3.4 named an unknown facility; the site came from MSH-4
    "site_unmapped",  # neither PV1-3.4 nor MSH-4 maps: keyed by UNMAPPED_SITE
    "trigger_not_mapped",  # a valid ADT trigger that changes nothing ICC counts (A28, A31, …)
    "registration_not_emergency",  # A04 for a patient class other than E: not an ED arrival
    "bed_status_unmapped",  # A20 for a bed that is not in the mapping: no event
]


@dataclass(frozen=True)
class UnmappedLocation:
    """A location code that did not map: `kind` says which part is missing from the mapping."""

    site_id: str | None
    kind: UnmappedKind
    code: str
    example: str
    field: str


@dataclass(frozen=True)
class MappedAdt:
    envelopes: tuple[Envelope, ...]
    site_id: str
    unmapped: tuple[UnmappedLocation, ...] = ()
    notes: tuple[Note, ...] = ()

    def outbox_events(self) -> list[OutboxEvent]:
        return [
            OutboxEvent(e.event_id, topic_for(e).name, e.site_id, e.to_json(), e.event_type)
            for e in self.envelopes
        ]


def topic_for(envelope: Envelope) -> topics.Topic:
    return topics.EDFLOW if envelope.event_type.startswith("ed.") else topics.BEDS


def map_adt(
    message: AdtMessage,
    *,
    source: str,
    content_sha256: bytes,
    mapper: LocationMapper,
    pseudonymise: Pseudonymiser,
    bounds: EventTimeBounds | None = None,
) -> MappedAdt:
    """The canonical events of one ADT message; raises Hl7Error (AE) when required content is missing
    or an event time is out of `bounds` (by default those of a message received now)."""
    try:
        return _Mapping(
            message, source, content_sha256, mapper, pseudonymise, bounds or EventTimeBounds.at_receipt()
        ).run()
    except Hl7Error as exc:
        exc.header = message.header
        raise


@dataclass
class _Mapping:
    message: AdtMessage
    source: str
    content_sha256: bytes
    mapper: LocationMapper
    pseudonymise: Pseudonymiser
    bounds: EventTimeBounds
    unmapped: list[UnmappedLocation] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)

    def __post_init__(self) -> None:
        header = self.message.header
        self.fallback_site = (
            self.mapper.site_for_facility(header.sending_facility) if header.sending_facility else None
        )
        self.message_key = f"{self.source}|{header.control_id}|{self.content_sha256.hex()}"
        self.correlation_id = name_based_id(_EVENT_NAMESPACE, self.message_key)
        self.site_id = UNMAPPED_SITE

    def run(self) -> MappedAdt:
        handler = _HANDLERS.get(self.message.trigger)
        if handler is None:
            self.notes.append("trigger_not_mapped")
        else:
            handler(self)
        return MappedAdt(tuple(self.envelopes), self.site_id, tuple(self.unmapped), tuple(self.notes))

    # ── pieces ─────────────────────────────────────────────────────────────────────────────

    def visit(self, number: int = 1) -> Visit:
        visits = self.message.visits
        if len(visits) < number:
            wanted = "a PID and a PV1 segment" if number == 1 else f"{number} PID/PV1 pairs"
            raise error(
                ErrorCode.segment_sequence,
                f"{self.message.trigger} needs {wanted}",
                ErrorLocation("PID", number),
            )
        visit = visits[number - 1]
        if not visit.has_pid or not visit.has_pv1:
            missing = "PID" if not visit.has_pid else "PV1"
            raise error(
                ErrorCode.segment_sequence,
                f"{self.message.trigger}: {missing} segment missing",
                ErrorLocation(missing, number),
            )
        return visit

    def patient_id(self, visit: Visit) -> str | None:
        for wanted, kind in (("NH", IdKind.nhs_number), ("MR", IdKind.mrn)):
            for ident in visit.identifiers:
                if ident.type_code == wanted:
                    issuer = "" if kind is IdKind.nhs_number else ident.authority or self._issuer()
                    return self.pseudonymise(kind, ident.value, issuer)
        return None

    def encounter_id(self, visit: Visit) -> str:
        if not visit.visit_number:
            raise error(
                ErrorCode.required_field_missing,
                f"{self.message.trigger}: PV1-19 (visit number) is empty",
                ErrorLocation("PV1", visit.sequence, 19),
            )
        return self.pseudonymise(
            IdKind.encounter, visit.visit_number, visit.visit_authority or self._issuer()
        )

    def _issuer(self) -> str:
        return self.message.header.sending_facility

    def location(self, place: PatientLocation, where: str, *, census: bool = True) -> Location:
        """Map a PL; for census locations, record what did not map and settle the site."""
        facility_site = self.mapper.site_for_facility(place.facility) if place.facility else None
        mapped = self.mapper.map(
            place.point_of_care, place.room, place.bed, place.facility, default_site=self.fallback_site
        )
        site = facility_site or (self.fallback_site if not place.facility else None)
        if census:
            self._record(place, mapped, site, where)
        self._settle_site(mapped, place, facility_site)
        return mapped

    def _record(self, place: PatientLocation, mapped: Location, site: str | None, where: str) -> None:
        if place.facility and site is None:
            self._unmapped(self.fallback_site, "facility", place.facility, mapped, where)
        elif site is None:
            sender = self.message.header.sending_facility or "(none)"
            self._unmapped(None, "facility", sender, mapped, "MSH-4")
        elif mapped.ward_id is None and place.point_of_care:
            self._unmapped(site, "ward", place.point_of_care, mapped, where)
        elif mapped.ward_id is not None and mapped.bed_id is None and place.room and place.bed:
            code = f"{place.point_of_care}^{place.room}^{place.bed}"
            self._unmapped(site, "bed", code, mapped, where)

    def _unmapped(
        self, site: str | None, kind: UnmappedKind, code: str, mapped: Location, where: str
    ) -> None:
        self.unmapped.append(UnmappedLocation(site, kind, code.strip().upper(), mapped.pas_code, where))

    def _settle_site(self, mapped: Location, place: PatientLocation, facility_site: str | None) -> None:
        """The first location that tells the site keys the message; later ones cannot change it."""
        if self.site_id != UNMAPPED_SITE:
            return
        if mapped.ward_id is not None:
            self.site_id = self.mapper.org.wards[mapped.ward_id].site_id
        elif facility_site is not None:
            self.site_id = facility_site
        elif self.fallback_site is not None:
            self.site_id = self.fallback_site
            if place.facility:
                self.notes.append("site_from_sending_facility")

    def required_location(self, visit: Visit, *, prior: bool = False) -> Location:
        place = visit.prior_location if prior else visit.location
        number = 6 if prior else 3
        if place.empty:
            raise error(
                ErrorCode.required_field_missing,
                f"{self.message.trigger}: PV1-{number} (patient location) is empty",
                ErrorLocation("PV1", visit.sequence, number),
            )
        return self.location(place, f"PV1-{number}")

    def optional_location(self, visit: Visit, *, prior: bool = False) -> Location | None:
        place = visit.prior_location if prior else visit.location
        return None if place.empty else self.location(place, f"PV1-{6 if prior else 3}")

    def occurred_at(
        self, visit_time: datetime | None = None, visit_field: ErrorLocation = ErrorLocation("PV1")
    ) -> datetime:
        """The first event time sent (`visit_field` says where `visit_time` was read), within bounds."""
        message = self.message
        sent = (
            (message.event_occurred_at, ErrorLocation("EVN", field=6)),
            (message.recorded_at, ErrorLocation("EVN", field=2)),
            (visit_time, visit_field),
            (message.header.sent_at, ErrorLocation("MSH", field=7)),
        )
        for when, where in sent:
            if when is None:
                continue
            reason = self.bounds.refusal(when)
            if reason is not None:
                raise error(ErrorCode.data_type_error, f"{where} (the event time): {reason}", where)
            return when
        raise error(
            ErrorCode.required_field_missing,
            "no event time: EVN-6, EVN-2, PV1-44/45 and MSH-7 are all empty",
            ErrorLocation("EVN", field=2),
        )

    def emit(self, payload: Payload, entity_id: str, occurred_at: datetime) -> None:
        if self.site_id == UNMAPPED_SITE:
            if self.fallback_site is not None:
                self.site_id = self.fallback_site
            elif "site_unmapped" not in self.notes:
                self.notes.append("site_unmapped")
        index = len(self.envelopes)
        self.envelopes.append(
            Envelope.wrap(
                payload,
                event_id=name_based_id(_EVENT_NAMESPACE, f"{self.message_key}|{index}"),
                occurred_at=occurred_at,
                source=self.source,
                site_id=self.site_id,
                entity_id=entity_id,
                correlation_id=self.correlation_id,
            )
        )

    def specialty(self, visit: Visit) -> str | None:
        return visit.hospital_service or None


# ── one handler per trigger ─────────────────────────────────────────────────────────────────


def _admit(m: _Mapping, *, from_ed: bool) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = PatientAdmitted(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.required_location(visit),
        specialty=m.specialty(visit),
        from_ed=from_ed,
    )
    m.emit(payload, encounter, m.occurred_at(visit.admitted_at, ErrorLocation("PV1", visit.sequence, 44)))


def _transfer(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = PatientTransferred(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.required_location(visit),
        previous=m.optional_location(visit, prior=True),
    )
    m.emit(payload, encounter, m.occurred_at())


def _discharge(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = PatientDischarged(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.optional_location(visit),
        reason="died" if visit.died else "discharged",
    )
    m.emit(payload, encounter, m.occurred_at(visit.discharged_at, ErrorLocation("PV1", visit.sequence, 45)))


def _register(m: _Mapping) -> None:
    visit = m.visit()
    if visit.patient_class not in EMERGENCY_CLASSES:
        m.notes.append("registration_not_emergency")
        return
    attendance = m.encounter_id(visit)
    if not visit.location.empty:
        m.location(visit.location, "PV1-3", census=False)
    payload = EdArrived(
        attendance_id=attendance,
        patient_id=m.patient_id(visit),
        mode=ARRIVAL_MODES.get(visit.arrival_mode, "other"),
    )
    m.emit(payload, attendance, m.occurred_at(visit.admitted_at, ErrorLocation("PV1", visit.sequence, 44)))


def _preadmit(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = PatientPreadmitted(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.optional_location(visit),
        expected_admit_at=visit.expected_admit_at,
        specialty=m.specialty(visit),
    )
    m.emit(payload, encounter, m.occurred_at())


def _to_outpatient(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    # the inpatient place being left: the prior location when sent, else the current one
    left = m.optional_location(visit, prior=True) or m.optional_location(visit)
    payload = PatientDischarged(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=left,
        reason="changed_to_outpatient",
    )
    m.emit(payload, encounter, m.occurred_at())


def _update(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = PatientUpdated(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.optional_location(visit),
        specialty=m.specialty(visit),
        expected_discharge=visit.expected_discharge,
    )
    m.emit(payload, encounter, m.occurred_at())


def _temporary(m: _Mapping, direction: Literal["departed", "arrived"]) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    # the census location only keys the event; temporary places (theatre, X-ray) are not wards
    if not visit.location.empty:
        m.location(visit.location, "PV1-3", census=False)
    temporary = visit.temporary_location
    payload = TemporaryMove(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        direction=direction,
        temporary_location=None if temporary.empty else m.location(temporary, "PV1-11", census=False),
    )
    m.emit(payload, encounter, m.occurred_at())


def _cancel_admit(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = AdmissionCancelled(
        encounter_id=encounter, patient_id=m.patient_id(visit), location=m.optional_location(visit)
    )
    m.emit(payload, encounter, m.occurred_at())


def _cancel_transfer(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = TransferCancelled(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        location=m.required_location(visit),  # A12: PV1-3 is where the patient was before the transfer
        cancelled_location=m.optional_location(visit, prior=True),
    )
    m.emit(payload, encounter, m.occurred_at())


def _cancel_discharge(m: _Mapping) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = DischargeCancelled(
        encounter_id=encounter, patient_id=m.patient_id(visit), location=m.required_location(visit)
    )
    m.emit(payload, encounter, m.occurred_at())


def _swap(m: _Mapping) -> None:
    first, second = m.visit(1), m.visit(2)
    sides = [
        SwapSide(
            encounter_id=m.encounter_id(visit),
            patient_id=m.patient_id(visit),
            location=m.required_location(visit),
        )
        for visit in (first, second)
    ]
    m.emit(PatientsSwapped(first=sides[0], second=sides[1]), sides[0].encounter_id, m.occurred_at())


def _bed_status(m: _Mapping) -> None:
    """A20: the bed from NPU-1 and its status from NPU-2 (v2.3+), or else PV1-3 and PV1-40."""
    message = m.message
    if message.npu_bed is not None:
        place, code = message.npu_bed, message.npu_bed_status
        at_bed, at_status = ErrorLocation("NPU", 1, 1), ErrorLocation("NPU", 1, 2)
    else:
        visit = next((v for v in message.visits if v.has_pv1), None)
        if visit is None:
            raise error(ErrorCode.segment_sequence, "A20 needs an NPU (or PV1) segment", ErrorLocation("NPU"))
        place, code = visit.location, visit.bed_status
        at_bed, at_status = ErrorLocation("PV1", visit.sequence, 3), ErrorLocation("PV1", visit.sequence, 40)
    if not (place.point_of_care and place.room and place.bed):
        raise error(
            ErrorCode.required_field_missing,
            f"A20: {at_bed} must name a bed (point of care^room^bed[^facility])",
            at_bed,
        )
    if not code:
        raise error(ErrorCode.required_field_missing, f"A20: {at_status} (bed status) is empty", at_status)
    try:
        status = BedStatus.from_hl7(code)
    except KeyError:
        raise error(
            ErrorCode.table_value_not_found,
            f"A20: bed status {code!r} in {at_status} is not in HL7 table 0116 (C H I K O U)",
            at_status,
        ) from None
    bed = m.location(place, f"{at_bed.segment}-{at_bed.field}")
    if bed.ward_id is None or bed.bed_id is None:
        m.notes.append("bed_status_unmapped")
        return
    m.emit(
        BedStatusChanged(ward_id=bed.ward_id, bed_id=bed.bed_id, status=status), bed.bed_id, m.occurred_at()
    )


def _leave(m: _Mapping, state: Literal["started", "ended"]) -> None:
    visit = m.visit()
    encounter = m.encounter_id(visit)
    payload = LeaveOfAbsence(
        encounter_id=encounter,
        patient_id=m.patient_id(visit),
        state=state,
        location=m.optional_location(visit),
    )
    m.emit(payload, encounter, m.occurred_at())


_HANDLERS: dict[str, Callable[[_Mapping], None]] = {
    "A01": lambda m: _admit(m, from_ed=False),
    "A02": _transfer,
    "A03": _discharge,
    "A04": _register,
    "A05": _preadmit,
    "A06": lambda m: _admit(m, from_ed=True),
    "A07": _to_outpatient,
    "A08": _update,
    "A09": lambda m: _temporary(m, "departed"),
    "A10": lambda m: _temporary(m, "arrived"),
    "A11": _cancel_admit,
    "A12": _cancel_transfer,
    "A13": _cancel_discharge,
    "A17": _swap,
    "A20": _bed_status,
    "A21": lambda m: _leave(m, "started"),
    "A22": lambda m: _leave(m, "ended"),
}
