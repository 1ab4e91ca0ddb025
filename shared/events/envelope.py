"""The canonical event envelope and its typed payloads.

Every event on every topic is an `Envelope`; the payload is a discriminated union on `event_type`.
Topic names carry the major schema version, so an additive change keeps `schema_version`; a breaking
one adds an upcaster here and bumps the topic.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import uuid_utils.compat as uuid_compat
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.events.base import Payload
from shared.events.beds import BedNcrChanged, BedStatusChanged
from shared.events.ed import (
    AmbulanceArrived,
    AmbulanceHandedOver,
    EdArrived,
    EdAssessed,
    EdClinicallyReady,
    EdConcluded,
    EdDecisionToAdmit,
    EdDeparted,
    EdSeen,
)
from shared.events.escalations import EscalationChanged
from shared.events.patients import (
    AdmissionCancelled,
    DischargeCancelled,
    LeaveOfAbsence,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientsSwapped,
    PatientTransferred,
    PatientUpdated,
    TemporaryMove,
    TransferCancelled,
)
from shared.events.state import ScopeStateChanged, WardStateChanged

SCHEMA_VERSION = 1


def new_event_id() -> uuid.UUID:
    """UUIDv7: time-ordered, so ids sort roughly by creation."""
    return uuid_compat.uuid7()


_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant bits
_UUID5_SET = (5 << 76) | (0x8000 << 48)  # version 5, RFC 4122 variant


def name_based_id(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """The same id as `uuid.uuid5(namespace, name)`, computed with less overhead (a unit test compares them).

    Derived event ids are made for every event ingested, several per HL7 message.
    """
    digest = hashlib.sha1(namespace.bytes + name.encode()).digest()
    return uuid.UUID(int=(int.from_bytes(digest[:16], "big") & _UUID5_CLEAR) | _UUID5_SET)


def utcnow() -> datetime:
    return datetime.now(UTC)


PAYLOAD_TYPES: tuple[type[Payload], ...] = (
    BedStatusChanged,
    BedNcrChanged,
    PatientAdmitted,
    PatientTransferred,
    PatientDischarged,
    AdmissionCancelled,
    TransferCancelled,
    DischargeCancelled,
    PatientsSwapped,
    PatientUpdated,
    PatientPreadmitted,
    TemporaryMove,
    LeaveOfAbsence,
    EdArrived,
    EdAssessed,
    EdSeen,
    EdDecisionToAdmit,
    EdClinicallyReady,
    EdConcluded,
    EdDeparted,
    AmbulanceArrived,
    AmbulanceHandedOver,
    WardStateChanged,
    ScopeStateChanged,
    EscalationChanged,
)

AnyPayload = Annotated[
    BedStatusChanged
    | BedNcrChanged
    | PatientAdmitted
    | PatientTransferred
    | PatientDischarged
    | AdmissionCancelled
    | TransferCancelled
    | DischargeCancelled
    | PatientsSwapped
    | PatientUpdated
    | PatientPreadmitted
    | TemporaryMove
    | LeaveOfAbsence
    | EdArrived
    | EdAssessed
    | EdSeen
    | EdDecisionToAdmit
    | EdClinicallyReady
    | EdConcluded
    | EdDeparted
    | AmbulanceArrived
    | AmbulanceHandedOver
    | WardStateChanged
    | ScopeStateChanged
    | EscalationChanged,
    Field(discriminator="event_type"),
]


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
    payload: AnyPayload

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Envelope:
        if self.event_type != self.payload.event_type:
            raise ValueError(
                f"event_type {self.event_type!r} disagrees with payload type {self.payload.event_type!r}"
            )
        return self

    @classmethod
    def wrap(cls, payload: Payload, **fields: Any) -> Envelope:
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
    for model in PAYLOAD_TYPES:
        name = model.model_fields["event_type"].default
        schemas[name] = model.model_json_schema()
    return schemas


envelope_adapter: TypeAdapter[Envelope] = TypeAdapter(Envelope)
