"""Patient movement events (topic icc.beds.v1, so they stay ordered with the site's bed events).

Mapped from HL7 v2 ADT and FHIR Encounter. Identifiers are pseudonymised at the edge (keyed HMAC):
`encounter_id` from the visit/encounter number, `patient_id` from NHS number or MRN. Names,
addresses and free text never reach an event.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events.base import Payload


class Location(BaseModel):
    """Where a patient is. `ward_id`/`bed_id` are None when the PAS code is not in the mapping:
    the event is still accepted and the location counted as unmapped, never guessed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ward_id: str | None = None
    bed_id: str | None = None
    pas_code: str = Field(
        default="", description="the source's location as sent, e.g. PV1-3 `WD12^B3^4^RXN01`"
    )

    @property
    def mapped(self) -> bool:
        return self.ward_id is not None


class _Encounter(Payload):
    encounter_id: str = Field(description="pseudonymised visit / encounter number")
    patient_id: str | None = Field(default=None, description="pseudonymised NHS number or MRN")


class PatientAdmitted(_Encounter):
    """A01 admit, A06 outpatient/ED → inpatient, FHIR inpatient Encounter arrived / in-progress."""

    event_type: Literal["patient.admitted"] = "patient.admitted"
    location: Location
    specialty: str | None = None
    from_ed: bool = False


class PatientTransferred(_Encounter):
    """A02: new location (PV1-3), previous location (PV1-6)."""

    event_type: Literal["patient.transferred"] = "patient.transferred"
    location: Location
    previous: Location | None = None


class PatientDischarged(_Encounter):
    """A03 discharge (and A07 inpatient → outpatient, with that reason)."""

    event_type: Literal["patient.discharged"] = "patient.discharged"
    location: Location | None = None
    reason: Literal["discharged", "changed_to_outpatient", "died", "transferred_out"] = "discharged"


class AdmissionCancelled(_Encounter):
    """A11: the admission never happened; the bed is free again."""

    event_type: Literal["patient.admission_cancelled"] = "patient.admission_cancelled"
    location: Location | None = None


class TransferCancelled(_Encounter):
    """A12: back to `location`, the place before the cancelled transfer."""

    event_type: Literal["patient.transfer_cancelled"] = "patient.transfer_cancelled"
    location: Location
    cancelled_location: Location | None = None


class DischargeCancelled(_Encounter):
    """A13: the patient is back in `location`."""

    event_type: Literal["patient.discharge_cancelled"] = "patient.discharge_cancelled"
    location: Location


class SwapSide(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    encounter_id: str
    patient_id: str | None = None
    location: Location = Field(description="where this patient is after the swap")


class PatientsSwapped(Payload):
    """A17: two patients exchange locations; applied as one change, never half."""

    event_type: Literal["patient.swapped"] = "patient.swapped"
    first: SwapSide
    second: SwapSide


class PatientUpdated(_Encounter):
    """A08 (and FHIR updates): details that matter to capacity. None means 'not stated'."""

    event_type: Literal["patient.updated"] = "patient.updated"
    location: Location | None = None
    specialty: str | None = None
    no_criteria_to_reside: bool | None = None
    expected_discharge: date | None = None


class PatientPreadmitted(_Encounter):
    """A05 / FHIR planned: a pending admission."""

    event_type: Literal["patient.preadmitted"] = "patient.preadmitted"
    location: Location | None = None
    expected_admit_at: AwareDatetime | None = None
    specialty: str | None = None


class TemporaryMove(_Encounter):
    """A09 departed to / A10 arrived at a temporary location (theatre, X-ray): no census change."""

    event_type: Literal["patient.temporary_move"] = "patient.temporary_move"
    direction: Literal["departed", "arrived"]
    temporary_location: Location | None = None


class LeaveOfAbsence(_Encounter):
    """A21 leave started / A22 returned: the bed stays the patient's."""

    event_type: Literal["patient.leave"] = "patient.leave"
    state: Literal["started", "ended"]
    location: Location | None = None
