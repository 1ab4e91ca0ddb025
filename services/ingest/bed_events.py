"""The bed-management JSON webhook: one bed's new status at the source's time."""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from services.ingest.event_time_bounds import EventTimeBounds
from shared import topics
from shared.events import BedStatus, BedStatusChanged, Envelope, name_based_id
from shared.organisation import Organisation
from shared.outbox import OutboxEvent
from shared.problems import Problem, validation_problem

# Event ids derived from content when a sender gives none: a re-sent identical message dedups.
_CONTENT_NAMESPACE = uuid.UUID("2f1c7d1e-5d0b-4c55-9a53-0c3f5e1b7a10")


class BedEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: uuid.UUID | None = Field(default=None, description="the sender's id; re-sending it is harmless")
    site_id: str = Field(min_length=1, max_length=64)
    ward_id: str = Field(min_length=1, max_length=64)
    bed_id: str = Field(min_length=1, max_length=96)
    status: BedStatus
    occurred_at: AwareDatetime = Field(description="when the status changed, in the source's clock")


def to_event(
    body: BedEventIn, *, source: str, org: Organisation, bounds: EventTimeBounds | None = None
) -> OutboxEvent:
    """The bed's event, at a time within `bounds` (by default those of a message received now)."""
    ward = org.wards.get(body.ward_id)
    if ward is None or ward.site_id != body.site_id:
        raise Problem(
            422,
            "unknown-location",
            "Unknown location",
            f"ward {body.ward_id!r} is not a ward of site {body.site_id!r}",
            errors=[{"field": "ward_id", "message": "not in the organisation model for this site"}],
        )
    bed = org.beds.get(body.bed_id)
    if bed is None or bed.ward_id != ward.id:
        raise Problem(
            422,
            "unknown-location",
            "Unknown location",
            f"bed {body.bed_id!r} is not a bed of ward {ward.id!r}",
            errors=[{"field": "bed_id", "message": "not in the organisation model for this ward"}],
        )
    (bounds or EventTimeBounds.at_receipt()).check_json_field(body.occurred_at, "occurred_at")
    event_id = body.event_id or name_based_id(
        _CONTENT_NAMESPACE, f"{source}|{body.model_dump_json(exclude={'event_id'})}"
    )
    envelope = Envelope.wrap(
        BedStatusChanged(ward_id=ward.id, bed_id=bed.id, status=body.status),
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
    raw: bytes, *, source: str, org: Organisation, bounds: EventTimeBounds | None = None
) -> list[OutboxEvent]:
    """One JSON body → its event, or a `Problem` naming the field."""
    try:
        body = BedEventIn.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    return [to_event(body, source=source, org=org, bounds=bounds)]
