"""Bed events (topic icc.beds.v1): a bed's status and flags, from bed management or HL7 A20."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from shared.events.base import Payload


class BedStatus(StrEnum):
    """Bed status, named after HL7 table 0116 (code in brackets)."""

    occupied = "occupied"  # O
    unoccupied = "unoccupied"  # U
    closed = "closed"  # C
    housekeeping = "housekeeping"  # H
    isolated = "isolated"  # I
    contaminated = "contaminated"  # K

    @property
    def hl7_code(self) -> str:
        return _HL7_0116[self]

    @classmethod
    def from_hl7(cls, code: str) -> BedStatus:
        """Map an HL7 table 0116 code; raises KeyError for a code outside the table."""
        return _FROM_HL7[code.strip().upper()]


_HL7_0116 = {
    BedStatus.occupied: "O",
    BedStatus.unoccupied: "U",
    BedStatus.closed: "C",
    BedStatus.housekeeping: "H",
    BedStatus.isolated: "I",
    BedStatus.contaminated: "K",
}
_FROM_HL7 = {code: status for status, code in _HL7_0116.items()}


class BedStatusChanged(Payload):
    event_type: Literal["bed.status_changed"] = "bed.status_changed"
    ward_id: str
    bed_id: str
    status: BedStatus


class BedNcrChanged(Payload):
    """The patient in this bed has (or no longer has) no criteria to reside."""

    event_type: Literal["bed.ncr_changed"] = "bed.ncr_changed"
    ward_id: str
    bed_id: str
    no_criteria_to_reside: bool
