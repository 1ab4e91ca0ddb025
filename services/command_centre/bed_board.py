"""A ward's bed board: pure domain logic, no I/O.

Bed status changes are applied by the source's event time, never by arrival: a late message that is
older than what a bed already shows changes nothing. Ties on time are broken by event id, so any
order of the same events, with any duplicates, ends in the same board.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from shared.events import BedStatus, WardBedCounts, WardStateChanged
from shared.organisation import Ward


class Applied(Enum):
    stale = "stale"  # older than what the bed shows: ignored
    recorded = "recorded"  # newer, same status: only the bed's time moves on
    changed = "changed"  # the ward's picture changed


@dataclass(frozen=True)
class BedRecord:
    status: BedStatus
    occurred_at: datetime
    event_id: uuid.UUID

    def supersedes(self, other: BedRecord) -> bool:
        return (self.occurred_at, self.event_id.bytes) > (other.occurred_at, other.event_id.bytes)


@dataclass
class WardBoard:
    """The live beds of one ward. Beds that never reported count as unoccupied (the bed base is known)."""

    ward: Ward
    system_id: str
    version: int = 0
    beds: dict[str, BedRecord] = field(default_factory=dict)
    as_of: datetime | None = None

    def apply(self, bed_id: str, record: BedRecord) -> Applied:
        current = self.beds.get(bed_id)
        if current is not None and not record.supersedes(current):
            return Applied.stale
        self.beds[bed_id] = record
        if self.as_of is None or record.occurred_at > self.as_of:
            self.as_of = record.occurred_at
        previous = current.status if current is not None else BedStatus.unoccupied
        return Applied.changed if previous != record.status else Applied.recorded

    def status_of(self, bed_id: str) -> BedStatus:
        record = self.beds.get(bed_id)
        return record.status if record is not None else BedStatus.unoccupied

    def summary(self) -> WardStateChanged:
        statuses = {bed.id: self.status_of(bed.id) for bed in self.ward.bed_list}
        counts = {status.value: 0 for status in BedStatus}
        for status in statuses.values():
            counts[status.value] += 1
        return WardStateChanged(
            system_id=self.system_id,
            ward_id=self.ward.id,
            version=self.version,
            beds_total=len(statuses),
            available=counts[BedStatus.unoccupied.value],
            counts=WardBedCounts(**counts),
            beds=statuses,
            as_of=self.as_of or datetime.fromtimestamp(0, UTC),
        )


def site_totals(wards: list[WardStateChanged]) -> dict[str, int]:
    """Totals across wards: beds, each status, available, and open beds (all but closed)."""
    totals = {"beds_total": 0, "available": 0, **{s.value: 0 for s in BedStatus}}
    for ward in wards:
        totals["beds_total"] += ward.beds_total
        totals["available"] += ward.available
        for status, n in ward.counts.model_dump().items():
            totals[status] += n
    totals["open_beds"] = totals["beds_total"] - totals[BedStatus.closed.value]
    return totals
