"""Bed management JSON: typed actions on one bed, mapped onto bed events. Pure: no I/O.

Actions say what the bed manager did, not a raw status, so the organisation model can refuse what
makes no sense: only beds it marks `escalation` can be opened or closed as escalation beds, and
those beds are opened and closed only by the escalation actions (opening one is an escalation
decision, counted in the OPEL "% open beds that are escalation beds").
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.patient_ids import content_event_id
from shared import topics
from shared.events import BedNcrChanged, BedStatus, BedStatusChanged, Envelope, Payload
from shared.organisation import Bed, Organisation
from shared.outbox import OutboxEvent
from shared.problems import Problem, validation_problem

_NAMESPACE = uuid.UUID("c8a1b0d2-3e4f-4a5b-8c6d-7e8f9a0b1c2d")

Action = Literal[
    "open_bed",
    "close_bed",
    "open_escalation_bed",
    "close_escalation_bed",
    "housekeeping",
    "isolate",
    "ncr_flag",
    "ncr_unflag",
]

_STATUS_OF: dict[str, BedStatus] = {
    "open_bed": BedStatus.unoccupied,
    "close_bed": BedStatus.closed,
    "open_escalation_bed": BedStatus.unoccupied,
    "close_escalation_bed": BedStatus.closed,
    "housekeeping": BedStatus.housekeeping,
}


class BedActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: uuid.UUID | None = Field(default=None, description="the sender's id; re-sending it is harmless")
    action: Action
    site_id: str = Field(min_length=1, max_length=64)
    ward_id: str = Field(min_length=1, max_length=64)
    bed_id: str = Field(min_length=1, max_length=96)
    occurred_at: AwareDatetime = Field(description="when it happened, in the source's clock")
    contaminated: bool = Field(
        default=False, description="isolate only: the bed is contaminated (HL7 0116 K), not just isolated (I)"
    )


def _refuse(field: str, kind: str, title: str, detail: str) -> Problem:
    return Problem(422, kind, title, detail, errors=[{"field": field, "message": detail}])


def _bed(body: BedActionIn, org: Organisation) -> Bed:
    ward = org.wards.get(body.ward_id)
    if ward is None or ward.site_id != body.site_id:
        raise _refuse(
            "ward_id",
            "unknown-location",
            "Unknown location",
            f"ward {body.ward_id!r} is not a ward of site {body.site_id!r}",
        )
    bed = org.beds.get(body.bed_id)
    if bed is None or bed.ward_id != ward.id:
        raise _refuse(
            "bed_id",
            "unknown-location",
            "Unknown location",
            f"bed {body.bed_id!r} is not a bed of ward {ward.id!r}",
        )
    return bed


def to_event(
    body: BedActionIn, *, source: str, org: Organisation, key: str, bounds: EventTimeBounds | None = None
) -> OutboxEvent:
    """The bed event of one action, at a time within `bounds` (by default those of a message received now)."""
    bed = _bed(body, org)
    escalation_action = body.action in ("open_escalation_bed", "close_escalation_bed")
    if escalation_action and not bed.escalation:
        raise _refuse(
            "action",
            "not-an-escalation-bed",
            "Not an escalation bed",
            f"bed {bed.id!r} is a core bed; the organisation model marks no escalation bed there "
            "(use open_bed / close_bed)",
        )
    if body.action in ("open_bed", "close_bed") and bed.escalation:
        raise _refuse(
            "action",
            "escalation-bed",
            "Escalation bed",
            f"bed {bed.id!r} is an escalation bed: use open_escalation_bed / close_escalation_bed",
        )
    if body.contaminated and body.action != "isolate":
        raise _refuse("contaminated", "validation", "Request body is not valid", "only for action isolate")
    (bounds or EventTimeBounds.at_receipt()).check_json_field(body.occurred_at, "occurred_at")
    payload: Payload
    if body.action in ("ncr_flag", "ncr_unflag"):
        payload = BedNcrChanged(
            ward_id=bed.ward_id, bed_id=bed.id, no_criteria_to_reside=body.action == "ncr_flag"
        )
    elif body.action == "isolate":
        status = BedStatus.contaminated if body.contaminated else BedStatus.isolated
        payload = BedStatusChanged(ward_id=bed.ward_id, bed_id=bed.id, status=status)
    else:
        payload = BedStatusChanged(ward_id=bed.ward_id, bed_id=bed.id, status=_STATUS_OF[body.action])
    event_id = body.event_id or content_event_id(
        key, _NAMESPACE, f"{source}|{body.model_dump_json(exclude={'event_id'})}"
    )
    envelope = Envelope.wrap(
        payload,
        event_id=event_id,
        occurred_at=body.occurred_at,
        source=source,
        site_id=body.site_id,
        entity_id=bed.id,
    )
    return OutboxEvent(
        envelope.event_id, topics.BEDS.name, body.site_id, envelope.to_json(), envelope.event_type
    )


def map_message(
    raw: bytes, *, source: str, org: Organisation, key: str, bounds: EventTimeBounds | None = None
) -> list[OutboxEvent]:
    try:
        body = BedActionIn.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    return [to_event(body, source=source, org=org, key=key, bounds=bounds)]
