"""The live state of one site: beds, inpatient encounters, ED attendances and ambulance handovers.

Pure domain, no I/O. Every piece of state is a last-writer-wins register ordered by the source's
event time (ties broken by event id), or a set keyed by event id, so applying the same events in
any order, with any duplicates, gives the same state. Metrics are computed from it in metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.events import (
    AdmissionCancelled,
    AmbulanceArrived,
    AmbulanceHandedOver,
    BedNcrChanged,
    BedStatus,
    BedStatusChanged,
    DischargeCancelled,
    EdArrived,
    EdAssessed,
    EdClinicallyReady,
    EdConcluded,
    EdDecisionToAdmit,
    EdDeparted,
    EdSeen,
    Envelope,
    LeaveOfAbsence,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientsSwapped,
    PatientTransferred,
    PatientUpdated,
    TemporaryMove,
    TransferCancelled,
)
from shared.organisation import Site

Stamp = tuple[datetime, bytes]
"""Order of writes: the source's event time, then the event id to break ties."""

HISTORY = timedelta(days=8)  # enough for "same day last week" comparisons


def stamp_of(envelope: Envelope) -> Stamp:
    return (envelope.occurred_at, envelope.event_id.bytes)


@dataclass(slots=True)
class Register:
    """A last-writer-wins value."""

    value: Any
    stamp: Stamp

    def offer(self, value: Any, stamp: Stamp) -> bool:
        if stamp <= self.stamp:
            return False
        self.value, self.stamp = value, stamp
        return True


def _offer(registers: dict[str, Register], key: str, value: Any, stamp: Stamp) -> bool:
    current = registers.get(key)
    if current is None:
        registers[key] = Register(value, stamp)
        return True
    return current.offer(value, stamp)


@dataclass(slots=True)
class Encounter:
    """An inpatient stay. `status` and `location` move together in one register."""

    status: Register  # value: (status, ward_id | None, bed_id | None)
    admitted: dict[bytes, tuple[datetime, str | None]] = field(default_factory=dict)  # event → (at, ward)
    transfers: dict[bytes, tuple[datetime, str | None, str | None]] = field(default_factory=dict)
    transfer_cancels: dict[bytes, datetime] = field(default_factory=dict)
    specialty: Register | None = None
    expected_discharge: Register | None = None
    on_leave: Register | None = None
    planned: Register | None = None  # a pre-admission's intended ward (A05): pending until admitted

    @property
    def state(self) -> str:
        """active / discharged / cancelled; `preadmitted` while only a pre-admission is known."""
        state = str(self.status.value[0])
        return "preadmitted" if state == "none" and self.planned is not None else state

    @property
    def pending_ward(self) -> str | None:
        return self.planned.value if self.planned is not None and self.state == "preadmitted" else None

    @property
    def ward_id(self) -> str | None:
        return self.status.value[1]  # type: ignore[no-any-return]

    @property
    def bed_id(self) -> str | None:
        return self.status.value[2]  # type: ignore[no-any-return]


@dataclass(slots=True)
class Attendance:
    """One ED attendance: the time of each milestone, plus what the milestones said."""

    milestones: dict[str, Register] = field(default_factory=dict)  # name → Register(at)
    acuity: Register | None = None
    mode: Register | None = None
    disposition: Register | None = None
    dta_specialty: Register | None = None

    def at(self, milestone: str) -> datetime | None:
        register = self.milestones.get(milestone)
        return register.value if register is not None else None


@dataclass(slots=True)
class Handover:
    arrived_at: Register | None = None
    handed_over_at: Register | None = None


_MILESTONES: dict[type, str] = {
    EdArrived: "arrived",
    EdAssessed: "assessed",
    EdSeen: "seen",
    EdDecisionToAdmit: "dta",
    EdClinicallyReady: "ready",
    EdConcluded: "concluded",
    EdDeparted: "departed",
}


@dataclass
class SiteState:
    site: Site
    system_id: str
    beds: dict[str, Register] = field(default_factory=dict)  # bed → BedStatus
    ncr: dict[str, Register] = field(default_factory=dict)  # bed → bool
    encounters: dict[str, Encounter] = field(default_factory=dict)
    attendances: dict[str, Attendance] = field(default_factory=dict)
    handovers: dict[str, Handover] = field(default_factory=dict)
    unmapped_locations: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        self.ward_of_bed = {b.id: w.id for w in self.site.wards for b in w.bed_list}

    # ---- applying events -------------------------------------------------------------------
    def apply(self, envelope: Envelope) -> set[str]:
        """Apply one event; return the ids of the wards whose picture changed ("" = site-level)."""
        self.applied += 1
        payload = envelope.payload
        stamp = stamp_of(envelope)
        at = envelope.occurred_at
        match payload:
            case BedStatusChanged():
                return self._bed(payload.bed_id, payload.status, stamp)
            case BedNcrChanged():
                return self._ncr(payload.bed_id, payload.no_criteria_to_reside, stamp)
            case PatientAdmitted():
                encounter = self._encounter(payload.encounter_id, stamp)
                encounter.admitted[stamp[1]] = (at, payload.location.ward_id)
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                return self._place(encounter, "active", payload.location, stamp)
            case PatientTransferred():
                encounter = self._encounter(payload.encounter_id, stamp)
                previous = payload.previous if payload.previous and payload.previous.mapped else None
                from_ward = previous.ward_id if previous else encounter.ward_id
                encounter.transfers[stamp[1]] = (at, from_ward, payload.location.ward_id)
                changed = self._vacate(previous.bed_id if previous else encounter.bed_id, stamp)
                return changed | self._place(encounter, "active", payload.location, stamp)
            case PatientDischarged():
                encounter = self._encounter(payload.encounter_id, stamp)
                location = payload.location if payload.location and payload.location.mapped else None
                ward = location.ward_id if location else encounter.ward_id
                bed = location.bed_id if location else encounter.bed_id
                changed = self._vacate(bed, stamp)
                encounter.status.offer(("discharged", ward, None), stamp)
                return changed | {ward or ""}
            case AdmissionCancelled():
                encounter = self._encounter(payload.encounter_id, stamp)
                location = payload.location if payload.location and payload.location.mapped else None
                bed = location.bed_id if location else encounter.bed_id
                ward = location.ward_id if location else encounter.ward_id
                changed = self._vacate(bed, stamp)
                encounter.status.offer(("cancelled", ward, None), stamp)
                return changed | {ward or ""}
            case TransferCancelled():
                encounter = self._encounter(payload.encounter_id, stamp)
                encounter.transfer_cancels[stamp[1]] = at
                cancelled = payload.cancelled_location
                undone_bed = cancelled.bed_id if cancelled and cancelled.mapped else encounter.bed_id
                changed = self._vacate(undone_bed, stamp) if undone_bed != payload.location.bed_id else set()
                return changed | self._place(encounter, "active", payload.location, stamp)
            case DischargeCancelled():
                encounter = self._encounter(payload.encounter_id, stamp)
                return self._place(encounter, "active", payload.location, stamp)
            case PatientsSwapped():
                swapped: set[str] = set()
                for side in (payload.first, payload.second):
                    encounter = self._encounter(side.encounter_id, stamp)
                    swapped |= self._place(encounter, "active", side.location, stamp)
                return swapped
            case PatientUpdated():
                encounter = self._encounter(payload.encounter_id, stamp)
                changed = set()
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                    changed.add(encounter.ward_id or "")
                if payload.expected_discharge is not None:
                    encounter.expected_discharge = _max_register(
                        encounter.expected_discharge, payload.expected_discharge, stamp
                    )
                    changed.add(encounter.ward_id or "")
                if payload.location is not None and payload.location.mapped:
                    changed |= self._place(
                        encounter,
                        encounter.state if encounter.state != "none" else "active",
                        payload.location,
                        stamp,
                    )
                bed = (payload.location.bed_id if payload.location else None) or encounter.bed_id
                if payload.no_criteria_to_reside is not None and bed:
                    changed |= self._ncr(bed, payload.no_criteria_to_reside, stamp)
                return changed
            case PatientPreadmitted():
                encounter = self._encounter(payload.encounter_id, stamp)
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                # kept apart from the status, so an admission wins whichever arrives first
                ward = payload.location.ward_id if payload.location else None
                encounter.planned = _max_register(encounter.planned, ward, stamp)
                return {payload.location.ward_id or ""} if payload.location else {""}
            case LeaveOfAbsence():
                encounter = self._encounter(payload.encounter_id, stamp)
                encounter.on_leave = _max_register(encounter.on_leave, payload.state == "started", stamp)
                return {encounter.ward_id or ""}
            case TemporaryMove():
                return set()  # A09/A10: the census bed does not change
            case (
                EdArrived()
                | EdAssessed()
                | EdSeen()
                | EdDecisionToAdmit()
                | EdClinicallyReady()
                | EdConcluded()
                | EdDeparted()
            ):
                return self._ed(payload, at, stamp)
            case AmbulanceArrived():
                handover = self.handovers.setdefault(payload.handover_id, Handover())
                handover.arrived_at = _max_register(handover.arrived_at, at, stamp)
                return {""}
            case AmbulanceHandedOver():
                handover = self.handovers.setdefault(payload.handover_id, Handover())
                # the handover message states the arrival time too: it is authoritative for the delay
                handover.arrived_at = _max_register(handover.arrived_at, payload.arrived_at, stamp)
                handover.handed_over_at = _max_register(handover.handed_over_at, at, stamp)
                return {""}
        return set()

    def _encounter(self, encounter_id: str, stamp: Stamp) -> Encounter:
        encounter = self.encounters.get(encounter_id)
        if encounter is None:
            # the weakest possible write, so any real event supersedes it
            encounter = Encounter(
                status=Register(("none", None, None), (datetime.min.replace(tzinfo=stamp[0].tzinfo), b""))
            )
            self.encounters[encounter_id] = encounter
        return encounter

    def _place(self, encounter: Encounter, status: str, location: Location, stamp: Stamp) -> set[str]:
        if not location.mapped:
            self.unmapped_locations += 1
        previous_ward = encounter.ward_id
        # The bed is written whether or not this is the encounter's latest news: the bed's own
        # register orders it against everything else that happened to that bed.
        changed = self._bed(location.bed_id, BedStatus.occupied, stamp) if location.bed_id else set()
        if encounter.status.offer((status, location.ward_id, location.bed_id), stamp):
            changed |= {previous_ward or "", location.ward_id or ""}
        return changed

    def _vacate(self, bed_id: str | None, stamp: Stamp) -> set[str]:
        """A bed given up: unoccupied, and its no-criteria-to-reside flag goes with the patient."""
        if not bed_id:
            return set()
        return self._bed(bed_id, BedStatus.unoccupied, stamp) | self._ncr(bed_id, False, stamp)

    def _bed(self, bed_id: str, status: BedStatus, stamp: Stamp) -> set[str]:
        ward = self.ward_of_bed.get(bed_id)
        if ward is None:
            self.unmapped_locations += 1
            return set()
        return {ward} if _offer(self.beds, bed_id, status, stamp) else set()

    def _ncr(self, bed_id: str, flag: bool, stamp: Stamp) -> set[str]:
        ward = self.ward_of_bed.get(bed_id)
        if ward is None:
            return set()
        return {ward} if _offer(self.ncr, bed_id, flag, stamp) else set()

    def _ed(self, payload: Any, at: datetime, stamp: Stamp) -> set[str]:
        attendance = self.attendances.setdefault(payload.attendance_id, Attendance())
        name = _MILESTONES[type(payload)]
        _offer(attendance.milestones, name, at, stamp)
        if isinstance(payload, EdArrived):
            attendance.mode = _max_register(attendance.mode, payload.mode, stamp)
        elif isinstance(payload, EdAssessed):
            attendance.acuity = _max_register(attendance.acuity, payload.acuity, stamp)
        elif isinstance(payload, EdDecisionToAdmit):
            attendance.dta_specialty = _max_register(attendance.dta_specialty, payload.specialty, stamp)
        elif isinstance(payload, EdDeparted):
            attendance.disposition = _max_register(attendance.disposition, payload.disposition, stamp)
        return {""}

    # ---- reading ---------------------------------------------------------------------------
    def bed_status(self, bed_id: str) -> BedStatus:
        register = self.beds.get(bed_id)
        return register.value if register is not None else BedStatus.unoccupied

    def has_ncr(self, bed_id: str) -> bool:
        register = self.ncr.get(bed_id)
        return bool(register.value) if register is not None else False

    def prune(self, now: datetime) -> int:
        """Forget what no metric needs any more: ED and handovers older than a week, old discharges."""
        horizon = now - HISTORY
        removed = 0
        for attendance_id, attendance in list(self.attendances.items()):
            departed = attendance.at("departed")
            if departed is not None and departed < horizon:
                del self.attendances[attendance_id]
                removed += 1
        for handover_id, handover in list(self.handovers.items()):
            done = handover.handed_over_at.value if handover.handed_over_at else None
            if done is not None and done < horizon:
                del self.handovers[handover_id]
                removed += 1
        for encounter_id, encounter in list(self.encounters.items()):
            if encounter.state in ("discharged", "cancelled") and encounter.status.stamp[0] < now - timedelta(
                days=2
            ):
                del self.encounters[encounter_id]
                removed += 1
        return removed


def _max_register(register: Register | None, value: Any, stamp: Stamp) -> Register:
    if register is None:
        return Register(value, stamp)
    register.offer(value, stamp)
    return register
