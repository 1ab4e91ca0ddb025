"""The live state of one site: beds, inpatient encounters, ED attendances and ambulance handovers.

Pure domain, no I/O. Beds, ED attendances and handovers are last-writer-wins registers ordered by
the source's event time (ties broken by event id). An inpatient encounter keeps its events as a
short timeline in that same order, and where the patient is, what the stay counts for and what it
wrote to beds are replayed from the timeline, so a late event takes its place in time. Applying the
same events in any order, with any duplicates, gives the same state. Metrics are computed from it
in metrics.py.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

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

Write = tuple[Stamp, Any]
"""A value written to a bed (its status, or its no-criteria-to-reside flag), and when."""

Move = tuple[datetime, str | None, str | None]
"""A transfer not since cancelled: when, from which ward, to which ward."""

# Enough for "same time last week" (last week's day began at most 7 × 24 + 1 + 25 = 194 hours ago,
# when a clock change falls between and today has 25 hours); also a finished stay's tombstone.
HISTORY = timedelta(days=8, hours=3)
SETTLE_AFTER = timedelta(days=2)
"""How long an encounter's events stay in its timeline, each placeable against a late one. Older
events are settled into one summary: no figure counts them any more (they are before yesterday),
and a patient event dated before the summary is too late to place (docs/metrics.md)."""
LAPSE_AFTER = HISTORY + SETTLE_AFTER
"""How long an encounter that no event has placed (only updates, leave, a pre-admission) is kept
after its last event, and after the admission a pre-admission expected. By then nothing it holds
counts (`Encounter.pending`, `Encounter.detail`), even for an event up to SETTLE_AFTER late, so a
prune forgets it."""
STALE_AFTER = timedelta(hours=72)
"""How long an ED attendance not departed, or an ambulance not handed over, stays in the live figures
after its latest milestone (an attendance's: any of them, the arrival included; an ambulance's: its
arrival). Real stays over 12 hours do reach 24 to 48 hours in the worst winters, but no real ED stay
or ambulance wait lasts three days without a single milestone: one quiet for longer is a leftover (its
departure or handover message lost, or a patient left on the board). It leaves the census, which it
would otherwise distort for ever, and is counted apart as a data-quality figure (docs/metrics.md)."""


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


class Step(StrEnum):
    """What an encounter event does to where the patient is (`ward`, `bed`: the location it states).

    admitted (A01/A06), discharge_cancelled (A13), swapped (A17): into the location.
    transferred (A02): into the location, from `prior_*` (PV1-6) if stated, else from where they were.
    discharged (A03/A07), admission_cancelled (A11): out of the location if stated, and of where
    they were. transfer_cancelled (A12): back into the location, out of `prior_bed` (the cancelled
    transfer's) and of where they were. updated (A08): an admitted patient's location and flag.
    """

    admitted = "admitted"
    transferred = "transferred"
    discharged = "discharged"
    admission_cancelled = "admission_cancelled"
    transfer_cancelled = "transfer_cancelled"
    discharge_cancelled = "discharge_cancelled"
    swapped = "swapped"
    updated = "updated"


class Fact(NamedTuple):
    """One event of an encounter's timeline, reduced to what placing the patient needs."""

    stamp: Stamp
    step: Step
    ward: str | None = None  # the location stated (None: not stated, or not mapped)
    bed: str | None = None
    prior_ward: str | None = None  # A02: the previous location (PV1-6) when stated
    prior_bed: str | None = None  # A02: likewise; A12: the location of the cancelled transfer
    ncr: bool | None = None  # A08: no criteria to reside, when stated


class Settled(NamedTuple):
    """The settled start of a timeline: where its events, folded, left the patient."""

    stamp: Stamp  # of the last event folded in: anything dated before is too late to place
    status: str
    ward: str | None
    bed: str | None
    since: datetime | None
    moved: datetime | None = None  # the stay's first movement (None: none yet, or settled before it was kept)


class Placement(NamedTuple):
    """A timeline replayed: where the patient is, and what the stay wrote to beds."""

    status: str  # none / active / discharged / cancelled
    ward: str | None
    bed: str | None
    since: datetime | None  # when the status was last set: a discharge's time
    moves: tuple[Move, ...]
    beds: dict[str, Write]  # bed → the last status this stay gave it
    ncr: dict[str, Write]  # bed → the last no-criteria-to-reside flag this stay gave it

    def counted(self) -> tuple[Any, ...]:
        """What the ward figures count of the stay (all but its writes to beds)."""
        return (self.status, self.ward, self.bed, self.since, self.moves)


def replay(settled: Settled | None, facts: Iterable[Fact]) -> Placement:
    """Fold a timeline in (event time, event id) order.

    A patient holds one bed at a time: entering a bed frees the one held before, and leaving a bed
    clears its no-criteria-to-reside flag. An event that names no origin (an A02 without PV1-6, an
    A03 or A11 without a location) leaves from where the earlier events put the patient. An A08
    describes an admitted patient: it moves one, but never admits nor brings back a patient.
    """
    status, ward, bed, since = "none", None, None, None
    if settled is not None:
        status, ward, bed, since = settled.status, settled.ward, settled.bed, settled.since
    moves: list[Move] = []
    beds: dict[str, Write] = {}
    ncr: dict[str, Write] = {}

    def leave(bed_id: str | None, stamp: Stamp) -> None:
        if bed_id is not None:
            beds[bed_id] = (stamp, BedStatus.unoccupied)
            ncr[bed_id] = (stamp, False)

    for fact in facts:
        stamp, step = fact.stamp, fact.step
        if step is Step.updated:
            if status != "active":
                continue
            # a ward-only location in the patient's own ward says nothing new about the bed
            if fact.ward is not None and (fact.bed is not None or fact.ward != ward):
                if fact.bed != bed:
                    leave(bed, stamp)
                ward, bed = fact.ward, fact.bed
                if bed is not None:
                    beds[bed] = (stamp, BedStatus.occupied)
            if fact.ncr is not None and bed is not None:
                ncr[bed] = (stamp, fact.ncr)
            continue
        if step is Step.discharged or step is Step.admission_cancelled:
            leave(fact.bed, stamp)
            if bed != fact.bed:
                leave(bed, stamp)
            status = "discharged" if step is Step.discharged else "cancelled"
            ward = fact.ward if fact.ward is not None else ward
            bed, since = None, stamp[0]
            continue
        if step is Step.transferred:
            moves.append((stamp[0], fact.prior_ward if fact.prior_ward is not None else ward, fact.ward))
        elif step is Step.transfer_cancelled and moves:
            moves.pop()  # an A12 undoes the latest transfer before it
        if fact.prior_bed != fact.bed:
            leave(fact.prior_bed, stamp)
        if bed != fact.bed and bed != fact.prior_bed:
            leave(bed, stamp)
        if fact.bed is not None:
            beds[fact.bed] = (stamp, BedStatus.occupied)
        status, ward, bed, since = "active", fact.ward, fact.bed, stamp[0]
    return Placement(status, ward, bed, since, tuple(moves), beds, ncr)


@dataclass(slots=True)
class Encounter:
    """An inpatient stay: its timeline, and the placement last replayed from it."""

    facts: list[Fact] = field(default_factory=list)  # by stamp, one per event
    settled: Settled | None = None
    status: str = "none"  # the placement, kept for reading (see `Placement`)
    ward_id: str | None = None
    bed_id: str | None = None
    since: datetime | None = None
    moves: tuple[Move, ...] = ()
    specialty: Register | None = None
    expected_discharge: Register | None = None
    on_leave: Register | None = None
    planned: Register | None = None  # a pre-admission's intended ward (A05): pending until admitted
    expected_admit: Register | None = None  # the latest A05's expected admission (None: not stated)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restore a pickled encounter (a snapshot): a field added since it was taken gets its default."""
        _, slots = state
        for f in fields(self):
            if f.name in slots:
                value = slots[f.name]
            else:
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, value)

    @property
    def state(self) -> str:
        """active / discharged / cancelled; `preadmitted` while only a pre-admission is known."""
        return "preadmitted" if self.status == "none" and self.planned is not None else self.status

    @property
    def pending_ward(self) -> str | None:
        return self.planned.value if self.planned is not None and self.state == "preadmitted" else None

    def pending(self, now: datetime) -> bool:
        """Pre-admitted, and its latest A05 was sent, or expects the admission, no more than HISTORY
        before `now`: an admission planned long ago that never came is no longer pending."""
        if self.state != "preadmitted" or self.planned is None:
            return False
        return self._plan_time() >= now - HISTORY

    def _plan_time(self) -> datetime:
        """The later of the latest A05's time and the admission it expects (pre-admitted only)."""
        assert self.planned is not None
        sent = self.planned.stamp[0]
        expected = self.expected_admit.value if self.expected_admit is not None else None
        return expected if expected is not None and expected > sent else sent

    def first_moved(self) -> datetime | None:
        """When an event first placed the patient (admitted, transferred, ...: not an update)."""
        settled = self.settled
        if settled is not None and settled.status != "none":
            return settled.moved
        return next((f.stamp[0] for f in self.facts if f.step is not Step.updated), None)

    def detail(self, register: Register | None) -> Any:
        """A detail of the stay (specialty, expected discharge, leave), or None when it is stale:
        stated more than HISTORY before the stay's first movement, or before the pre-admission that
        planned it (an A05 expecting the admission no more than HISTORY before that movement)."""
        if register is None:
            return None
        stated = register.stamp[0]
        if self.since is not None and stated >= self.since - HISTORY:
            return register.value  # the first movement is at or before `since`: not stale
        moved = self.first_moved()
        if moved is None:
            return register.value
        anchor = moved
        if self.planned is not None and self.expected_admit is not None:
            expected = self.expected_admit.value
            if expected is not None and expected >= moved - HISTORY:
                anchor = min(moved, self.planned.stamp[0])
        return register.value if stated >= anchor - HISTORY else None

    def last_heard(self) -> datetime | None:
        """The time of the encounter's latest event (None: no event left anything to keep)."""
        times = [
            r.stamp[0]
            for r in (self.specialty, self.expected_discharge, self.on_leave, self.planned)
            if r is not None
        ]
        if self.facts:
            times.append(self.facts[-1].stamp[0])
        if self.settled is not None:
            times.append(self.settled.stamp[0])
        return max(times, default=None)

    def lapsed(self, now: datetime) -> bool:
        """No event has placed the patient, and neither an event nor an expected admission is
        within LAPSE_AFTER before `now`: nothing the encounter holds can count any more."""
        if self.status != "none":
            return False
        heard = self.last_heard()
        expected = self.expected_admit.value if self.expected_admit is not None else None
        horizon = now - LAPSE_AFTER
        return (heard is None or heard < horizon) and (expected is None or expected < horizon)

    def admissions(self) -> Iterator[tuple[datetime, str | None]]:
        """(when, into which ward) of each admission still in the timeline."""
        return ((f.stamp[0], f.ward) for f in self.facts if f.step is Step.admitted)

    def replay(self) -> Placement:
        return replay(self.settled, self.facts)

    def adopt(self, placement: Placement) -> None:
        self.status, self.ward_id, self.bed_id = placement.status, placement.ward, placement.bed
        self.since, self.moves = placement.since, placement.moves


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

    def last_heard(self, now: datetime) -> datetime | None:
        """The latest of its milestones at or before `now`, the arrival included (None: none yet).
        Their event times, never when they were received: it depends on the events and `now` alone."""
        return max((r.value for r in self.milestones.values() if r.value <= now), default=None)


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
    beds: dict[str, Register] = field(default_factory=dict)  # bed → BedStatus: bed events, settled stays
    ncr: dict[str, Register] = field(default_factory=dict)  # bed → bool, likewise
    encounters: dict[str, Encounter] = field(default_factory=dict)
    # bed → encounter → the last write of the stay's replayed timeline, until the stay is settled
    bed_writes: dict[str, dict[str, Write]] = field(default_factory=dict)
    ncr_writes: dict[str, dict[str, Write]] = field(default_factory=dict)
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
                encounter = self._encounter(payload.encounter_id)
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                return self._record(
                    payload.encounter_id, Fact(stamp, Step.admitted, *self._place(payload.location))
                )
            case PatientTransferred():
                to, prior = self._place(payload.location), self._where(payload.previous)
                return self._record(payload.encounter_id, Fact(stamp, Step.transferred, *to, *prior))
            case PatientDischarged():
                location = self._where(payload.location)
                return self._record(payload.encounter_id, Fact(stamp, Step.discharged, *location))
            case AdmissionCancelled():
                location = self._where(payload.location)
                return self._record(payload.encounter_id, Fact(stamp, Step.admission_cancelled, *location))
            case TransferCancelled():
                back, (_, undone) = self._place(payload.location), self._where(payload.cancelled_location)
                fact = Fact(stamp, Step.transfer_cancelled, *back, prior_bed=undone)
                return self._record(payload.encounter_id, fact)
            case DischargeCancelled():
                back = self._place(payload.location)
                return self._record(payload.encounter_id, Fact(stamp, Step.discharge_cancelled, *back))
            case PatientsSwapped():
                swapped: set[str] = set()
                for side in (payload.first, payload.second):
                    fact = Fact(stamp, Step.swapped, *self._place(side.location))
                    swapped |= self._record(side.encounter_id, fact)
                return swapped
            case PatientUpdated():
                encounter = self._encounter(payload.encounter_id)
                changed = set()
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                    changed.add(encounter.ward_id or "")
                if payload.expected_discharge is not None:
                    encounter.expected_discharge = _max_register(
                        encounter.expected_discharge, payload.expected_discharge, stamp
                    )
                    changed.add(encounter.ward_id or "")
                ward, bed = self._where(payload.location)
                if ward is not None or payload.no_criteria_to_reside is not None:
                    fact = Fact(stamp, Step.updated, ward, bed, ncr=payload.no_criteria_to_reside)
                    changed |= self._record(payload.encounter_id, fact)
                return changed
            case PatientPreadmitted():
                encounter = self._encounter(payload.encounter_id)
                if payload.specialty:
                    encounter.specialty = _max_register(encounter.specialty, payload.specialty, stamp)
                # kept apart from the timeline, so an admission wins whichever is dated first
                ward = payload.location.ward_id if payload.location else None
                encounter.planned = _max_register(encounter.planned, ward, stamp)
                encounter.expected_admit = _max_register(
                    encounter.expected_admit, payload.expected_admit_at, stamp
                )
                return {payload.location.ward_id or ""} if payload.location else {""}
            case LeaveOfAbsence():
                encounter = self._encounter(payload.encounter_id)
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

    def _encounter(self, encounter_id: str) -> Encounter:
        encounter = self.encounters.get(encounter_id)
        if encounter is None:
            encounter = self.encounters[encounter_id] = Encounter()
        return encounter

    def _where(self, location: Location | None) -> tuple[str | None, str | None]:
        """A stated location as (ward, bed); None where not stated or not mapped. A bed the
        organisation model does not hold is counted as unmapped and left out."""
        if location is None or location.ward_id is None:
            return None, None
        bed = location.bed_id
        if bed is not None and bed not in self.ward_of_bed:
            self.unmapped_locations += 1
            bed = None
        # one string per ward and bed however many events name it
        return sys.intern(location.ward_id), sys.intern(bed) if bed is not None else None

    def _place(self, location: Location) -> tuple[str | None, str | None]:
        """Where an event puts a patient: as `_where`, and an unmapped location is counted."""
        if not location.mapped:
            self.unmapped_locations += 1
        return self._where(location)

    def _record(self, encounter_id: str, fact: Fact) -> set[str]:
        """Put an event in its encounter's timeline; replay it and apply what changed."""
        encounter = self._encounter(encounter_id)
        if encounter.settled is not None and fact.stamp <= encounter.settled.stamp:
            return set()  # dated before the settled part of the stay: too late to place
        facts = encounter.facts
        index = bisect.bisect_left(facts, fact.stamp, key=_stamp)
        if index < len(facts) and facts[index].stamp == fact.stamp:
            return set()  # a duplicate
        before = encounter.replay()
        facts.insert(index, fact)
        after = encounter.replay()
        encounter.adopt(after)
        changed = self._rewrite(encounter_id, before, after)
        if before.counted() != after.counted() or fact.step is Step.admitted:
            changed |= _mentioned(encounter, before) | _mentioned(encounter, after)
        return changed

    def _rewrite(self, encounter_id: str, before: Placement, after: Placement) -> set[str]:
        """Replace a stay's writes to beds by those of its new replay; the wards of the beds concerned."""
        changed = set()
        for writes, old, new in (
            (self.bed_writes, before.beds, after.beds),
            (self.ncr_writes, before.ncr, after.ncr),
        ):
            for bed_id in old.keys() | new.keys():
                write = new.get(bed_id)
                if write == old.get(bed_id):
                    continue
                held = writes.setdefault(bed_id, {})
                if write is None:
                    del held[encounter_id]
                    if not held:
                        del writes[bed_id]
                else:
                    held[encounter_id] = write
                changed.add(self.ward_of_bed[bed_id])
        return changed

    def _settle(self, encounter_id: str, encounter: Encounter, before: datetime | None) -> None:
        """Fold the events dated before `before` (all when None) into the timeline's settled start,
        and what they wrote to beds into the beds' registers, where it no longer changes."""
        facts = encounter.facts
        cut = len(facts) if before is None else bisect.bisect_left(facts, before, key=_time)
        if cut == 0:
            return
        whole = encounter.replay()
        head = replay(encounter.settled, facts[:cut])
        for registers, writes in ((self.beds, head.beds), (self.ncr, head.ncr)):
            for bed_id, write in writes.items():
                current = registers.get(bed_id)
                if current is None or _later(write, (current.stamp, current.value)):
                    registers[bed_id] = Register(write[1], write[0])
        moved = encounter.first_moved() if head.status != "none" else None  # from the whole timeline
        encounter.settled = Settled(facts[cut - 1].stamp, head.status, head.ward, head.bed, head.since, moved)
        del facts[:cut]
        rest = encounter.replay()
        encounter.adopt(rest)
        self._rewrite(encounter_id, whole, rest)

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
        status = _last(self.beds.get(bed_id), self.bed_writes.get(bed_id))
        return status if status is not None else BedStatus.unoccupied

    def has_ncr(self, bed_id: str) -> bool:
        return bool(_last(self.ncr.get(bed_id), self.ncr_writes.get(bed_id)))

    def last_written(self, bed_id: str) -> datetime | None:
        """The event time of the latest write to the bed, of its status or its flag: by its own events,
        a settled stay or a stay's replay (None: nothing ever wrote to it). Only the latest write of
        each is kept, and settling keeps the later one, so it is the same in any order and across a
        prune; an earlier write, hidden behind a later one, is not known."""
        latest: datetime | None = None  # loops, not a list: run for every bed of every ward published
        for register in (self.beds.get(bed_id), self.ncr.get(bed_id)):
            if register is not None and (latest is None or register.stamp[0] > latest):
                latest = register.stamp[0]
        for writes in (self.bed_writes.get(bed_id), self.ncr_writes.get(bed_id)):
            for stamp, _ in writes.values() if writes else ():
                if latest is None or stamp[0] > latest:
                    latest = stamp[0]
        return latest

    def prune(self, now: datetime) -> int:
        """Forget what no metric needs any more: an ED attendance or ambulance handover over for
        HISTORY (its departure or handover more than HISTORY before `now`, or, with none, its latest
        milestone: an ambulance's arrival); encounters' events older than SETTLE_AFTER are settled, a
        stay over for HISTORY is forgotten, and so is an encounter no event has placed once it has
        lapsed (`Encounter.lapsed`).

        An attendance or ambulance never finished has been a leftover (STALE_AFTER) for days by then,
        counted only by the stale figures, which stop at HISTORY, and it arrived before any window a
        figure counts: forgetting it changes no figure (a late event for it starts afresh).

        A finished stay is kept (settled, a few hundred bytes) for HISTORY rather than dropped, so
        that an event dated before its end, arriving late, cannot bring the patient back. A lapsed
        encounter wrote to no bed and counts nowhere, and its details would be stale for any later
        movement dated after `now - SETTLE_AFTER`: forgetting it changes no figure.
        """
        horizon = now - HISTORY
        removed = 0
        for attendance_id, attendance in list(self.attendances.items()):
            departed = attendance.at("departed")
            if departed is not None:
                over = departed < horizon
            else:  # every milestone, those after `now` too: a later one may yet count
                over = all(r.value < horizon for r in attendance.milestones.values())
            if over:
                del self.attendances[attendance_id]
                removed += 1
        for handover_id, handover in list(self.handovers.items()):
            done = handover.handed_over_at.value if handover.handed_over_at else None
            if done is None and handover.arrived_at is not None:
                done = handover.arrived_at.value  # never handed over: last heard of at its arrival
            if done is not None and done < horizon:
                del self.handovers[handover_id]
                removed += 1
        for encounter_id, encounter in list(self.encounters.items()):
            if encounter.facts and encounter.facts[0].stamp[0] < now - SETTLE_AFTER:
                self._settle(encounter_id, encounter, now - SETTLE_AFTER)
            finished = encounter.status in ("discharged", "cancelled")
            if finished and encounter.since is not None and encounter.since < horizon:
                self._settle(encounter_id, encounter, None)
                del self.encounters[encounter_id]
                removed += 1
            elif encounter.lapsed(now):
                del self.encounters[encounter_id]  # no status: no writes to beds to settle
                removed += 1
        return removed


def _stamp(fact: Fact) -> Stamp:
    return fact.stamp


def _time(fact: Fact) -> datetime:
    return fact.stamp[0]


def _later(write: Write, than: Write) -> bool:
    """Whether `write` is the later one. Two stays write at the same instant only in an A17 swap,
    where one patient leaves the bed the other enters: the patient entering wins."""
    return write[0] > than[0] or (write[0] == than[0] and write[1] is BedStatus.occupied)


def _last(register: Register | None, writes: dict[str, Write] | None) -> Any:
    """The latest value a bed was given: by its own events and settled stays, or by a stay's replay."""
    last = (register.stamp, register.value) if register is not None else None
    for write in writes.values() if writes else ():
        if last is None or _later(write, last):
            last = write
    return last[1] if last is not None else None


def _mentioned(encounter: Encounter, placement: Placement) -> set[str]:
    """The wards whose figures a placement of the encounter counts in ("" for none)."""
    wards = {placement.ward or ""}
    wards.update(ward or "" for _, *ends in placement.moves for ward in ends)
    wards.update(ward or "" for _, ward in encounter.admissions())
    if encounter.planned is not None:
        wards.add(encounter.planned.value or "")
    return wards


def _max_register(register: Register | None, value: Any, stamp: Stamp) -> Register:
    if register is None:
        return Register(value, stamp)
    register.offer(value, stamp)
    return register
