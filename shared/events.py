"""The canonical event envelope and its typed payloads.

Every event on every topic is an `Envelope`; the payload is a discriminated union on `event_type`.
Topic names carry the major schema version, so an additive change keeps `schema_version`; a breaking
one adds an upcaster here and bumps the topic.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
import uuid_utils.compat as uuid_compat
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = 1


def new_event_id() -> uuid.UUID:
    """UUIDv7: time-ordered, so ids sort roughly by creation."""
    return uuid_compat.uuid7()


def utcnow() -> datetime:
    return datetime.now(UTC)


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


_HL7_0116 = {
    BedStatus.occupied: "O",
    BedStatus.unoccupied: "U",
    BedStatus.closed: "C",
    BedStatus.housekeeping: "H",
    BedStatus.isolated: "I",
    BedStatus.contaminated: "K",
}


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BedStatusChanged(_Payload):
    event_type: Literal["bed.status_changed"] = "bed.status_changed"
    ward_id: str
    bed_id: str
    status: BedStatus


class WardBedCounts(_Payload):
    occupied: int = 0
    unoccupied: int = 0
    closed: int = 0
    housekeeping: int = 0
    isolated: int = 0
    contaminated: int = 0


class WardStateChanged(_Payload):
    """A ward's full bed picture after a change; `version` grows by one per change of that ward."""

    event_type: Literal["ward.state_changed"] = "ward.state_changed"
    system_id: str
    ward_id: str
    version: int
    beds_total: int
    available: int
    counts: WardBedCounts
    beds: dict[str, BedStatus]
    as_of: AwareDatetime


Payload = Annotated[BedStatusChanged | WardStateChanged, Field(discriminator="event_type")]


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    event_type: str
    schema_version: int = SCHEMA_VERSION
    occurred_at: AwareDatetime = Field(description="When it happened, in the source's clock (UTC).")
    recorded_at: AwareDatetime = Field(default_factory=utcnow, description="When ICC recorded it.")
    source: str
    site_id: str = Field(description="Kafka key: every event of a site is ordered in one partition.")
    entity_id: str
    correlation_id: uuid.UUID | None = None
    payload: Payload

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Envelope:
        if self.event_type != self.payload.event_type:
            raise ValueError(
                f"event_type {self.event_type!r} disagrees with payload type {self.payload.event_type!r}"
            )
        return self

    @classmethod
    def wrap(cls, payload: BedStatusChanged | WardStateChanged, **fields: Any) -> Envelope:
        return cls(event_type=payload.event_type, payload=payload, **fields)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        return cls.model_validate_json(upcast(data))


def upcast(data: bytes | str) -> bytes | str:
    """Rewrite payloads of older schema versions into the current shape when read.

    Version 1 is the only version so far, so this is the identity; it is the one place an upcaster goes.
    """
    return data


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema for the envelope and each payload, for the published docs."""
    schemas: dict[str, dict[str, Any]] = {"envelope": Envelope.model_json_schema()}
    for model in (BedStatusChanged, WardStateChanged):
        name = model.model_fields["event_type"].default
        schemas[name] = model.model_json_schema()
    return schemas


envelope_adapter: TypeAdapter[Envelope] = TypeAdapter(Envelope)
