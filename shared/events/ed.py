"""ED flow events (topic icc.edflow.v1): the ECDS milestones of an attendance, and ambulance handovers.

`attendance_id` is pseudonymised at the edge like every identifier. Times are the source's own
(`occurred_at` on the envelope); an ambulance handover carries both its times so the delay is
exact whatever order messages arrive in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from shared.events.base import Payload


class _Attendance(Payload):
    attendance_id: str = Field(description="pseudonymised ED attendance id")
    patient_id: str | None = None


class EdArrived(_Attendance):
    event_type: Literal["ed.arrived"] = "ed.arrived"
    mode: Literal["ambulance", "walk_in", "other"] = "other"


class EdAssessed(_Attendance):
    """Initial assessment; acuity 1 (immediate resuscitation) … 5 (non-urgent), ECDS/SNOMED mapped."""

    event_type: Literal["ed.assessed"] = "ed.assessed"
    acuity: int = Field(ge=1, le=5)


class EdSeen(_Attendance):
    """Seen for treatment by a decision-making clinician."""

    event_type: Literal["ed.seen"] = "ed.seen"


class EdDecisionToAdmit(_Attendance):
    event_type: Literal["ed.decision_to_admit"] = "ed.decision_to_admit"
    specialty: str | None = None


class EdClinicallyReady(_Attendance):
    """Clinically ready to proceed (to a ward, home, or elsewhere)."""

    event_type: Literal["ed.clinically_ready"] = "ed.clinically_ready"


class EdConcluded(_Attendance):
    event_type: Literal["ed.concluded"] = "ed.concluded"


class EdDeparted(_Attendance):
    event_type: Literal["ed.departed"] = "ed.departed"
    disposition: Literal[
        "admitted", "discharged", "transferred", "left_before_treatment", "died", "other"
    ] = "other"


class AmbulanceArrived(Payload):
    """An ambulance arrived at the hospital; the handover clock starts."""

    event_type: Literal["ambulance.arrived"] = "ambulance.arrived"
    handover_id: str = Field(description="pseudonymised ambulance incident / handover id")
    attendance_id: str | None = None


class AmbulanceHandedOver(Payload):
    """Clinical handover completed (standard 15 min; delays counted over 30 and 60 min)."""

    event_type: Literal["ambulance.handed_over"] = "ambulance.handed_over"
    handover_id: str
    attendance_id: str | None = None
    arrived_at: AwareDatetime
