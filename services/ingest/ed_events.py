"""ED system JSON: the ECDS milestones of an attendance, mapped onto canonical ED-flow events.

One JSON object per milestone, told apart by `milestone`. Identifiers (attendance, ambulance
handover, NHS number, MRN) become keyed pseudonyms here; nothing else about the patient is accepted.
Pure: no I/O.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.patient_ids import content_event_id, nhs_number_valid, patient_pseudonym
from shared import topics
from shared.events import (
    AmbulanceArrived,
    AmbulanceHandedOver,
    EdArrived,
    EdAssessed,
    EdClinicallyReady,
    EdConcluded,
    EdDecisionToAdmit,
    EdDeparted,
    EdSeen,
    Envelope,
    Payload,
    name_based_id,
)
from shared.organisation import Organisation
from shared.outbox import OutboxEvent
from shared.problems import Problem
from shared.pseudonymise import IdKind, pseudonymise

_NAMESPACE = uuid.UUID("7b0f4f0e-4a8e-4b1e-9d55-3f1e2d8c6a01")

SNOMED = "http://snomed.info/sct"
# EMERGENCY CARE ACUITY (SNOMED CT), NHS Data Model and Dictionary (Emergency care acuity simple
# reference set, owned by the Royal College of Emergency Medicine): concept id → acuity 1 … 5.
ACUITY_SNOMED: dict[str, int] = {
    "1064891000000107": 1,  # immediate resuscitation level emergency care
    "1064911000000105": 2,  # very urgent level emergency care
    "1064901000000108": 3,  # urgent level emergency care
    "1077241000000103": 4,  # standard level emergency care
    "1077251000000100": 5,  # low acuity (non-urgent) level emergency care
}


def acuity_of(value: int | str) -> int:
    """1 … 5 as sent, or the level of an ECDS acuity SNOMED CT concept id; ValueError otherwise."""
    text = str(value).strip()
    if text in ACUITY_SNOMED:
        return ACUITY_SNOMED[text]
    if text.isdigit() and 1 <= int(text) <= 5:
        return int(text)
    raise ValueError(
        "acuity must be 1 … 5 or an ECDS acuity SNOMED CT code "
        f"({', '.join(f'{code}={level}' for code, level in ACUITY_SNOMED.items())})"
    )


def _underscored(value: Any) -> Any:
    """`walk-in` and `walk_in` both; senders differ."""
    return value.replace("-", "_").lower() if isinstance(value, str) else value


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    nhs_number: str | None = Field(default=None, description="10 digits; spaces allowed; pseudonymised")
    mrn: str | None = Field(default=None, max_length=64, description="local hospital number; pseudonymised")

    @field_validator("nhs_number")
    @classmethod
    def _check_digit(cls, value: str | None) -> str | None:
        if value is not None and not nhs_number_valid(value):
            raise ValueError("not a valid NHS number (10 digits with a modulus-11 check digit)")
        return value


class AmbulanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    handover_id: str = Field(min_length=1, max_length=64, description="ambulance incident / conveyance id")
    arrived_at: AwareDatetime = Field(description="the ambulance's arrival at the hospital")
    handover_at: AwareDatetime | None = Field(default=None, description="clinical handover completed")

    @model_validator(mode="after")
    def _handover_after_arrival(self) -> AmbulanceIn:
        if self.handover_at is not None and self.handover_at < self.arrived_at:
            raise ValueError("handover_at is before arrived_at")
        return self


class _Milestone(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    event_id: uuid.UUID | None = Field(default=None, description="the sender's id; re-sending it is harmless")
    site_id: str = Field(min_length=1, max_length=64)
    attendance_id: str = Field(min_length=1, max_length=64, description="the ED system's attendance id")
    occurred_at: AwareDatetime = Field(description="when the milestone happened, in the source's clock")
    patient: PatientIn | None = None


class ArrivalIn(_Milestone):
    milestone: Literal["arrival"]
    mode: Annotated[Literal["ambulance", "walk_in", "other"], BeforeValidator(_underscored)]
    ambulance: AmbulanceIn | None = None

    @model_validator(mode="after")
    def _ambulance_with_its_mode(self) -> ArrivalIn:
        if self.mode == "ambulance" and self.ambulance is None:
            raise ValueError("an ambulance arrival needs `ambulance` (handover_id, arrived_at)")
        if self.mode != "ambulance" and self.ambulance is not None:
            raise ValueError("`ambulance` is only for mode ambulance")
        return self


class InitialAssessmentIn(_Milestone):
    milestone: Literal["initial_assessment"]
    acuity: int | str = Field(description="1 … 5, or an ECDS acuity SNOMED CT code")

    @field_validator("acuity")
    @classmethod
    def _known_acuity(cls, value: int | str) -> int:
        return acuity_of(value)


class SeenForTreatmentIn(_Milestone):
    milestone: Literal["seen_for_treatment"]


class DecisionToAdmitIn(_Milestone):
    milestone: Literal["decision_to_admit"]
    specialty: str | None = Field(default=None, max_length=80, description="the admitting specialty")


class ClinicallyReadyIn(_Milestone):
    milestone: Literal["clinically_ready_to_proceed"]


class ConclusionIn(_Milestone):
    milestone: Literal["conclusion"]


Disposition = Literal["admitted", "discharged", "transferred", "left_before_treatment", "died", "other"]


class DepartureIn(_Milestone):
    milestone: Literal["departure"]
    disposition: Annotated[Disposition, BeforeValidator(_underscored)]


EdEventIn = Annotated[
    ArrivalIn
    | InitialAssessmentIn
    | SeenForTreatmentIn
    | DecisionToAdmitIn
    | ClinicallyReadyIn
    | ConclusionIn
    | DepartureIn,
    Field(discriminator="milestone"),
]
ed_event_adapter: TypeAdapter[EdEventIn] = TypeAdapter(EdEventIn)
MILESTONES = (
    "arrival",
    "initial_assessment",
    "seen_for_treatment",
    "decision_to_admit",
    "clinically_ready_to_proceed",
    "conclusion",
    "departure",
)


def union_validation_problem(exc: ValidationError, tags: tuple[str, ...]) -> Problem:
    """422 naming each bad field, without the union member's tag pydantic puts in front of it."""
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in tags:
            loc = loc[1:]
        loc = [p for p in loc if not p.startswith("function-")]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["milestone"]
        errors.append({"field": ".".join(loc) or "<body>", "message": err["msg"]})
    fields = ", ".join(e["field"] for e in errors)
    return Problem(
        422, "validation", "Request body is not valid", f"invalid field(s): {fields}", errors=errors
    )


def parse(raw: bytes) -> EdEventIn:
    try:
        return ed_event_adapter.validate_json(raw)
    except ValidationError as exc:
        raise union_validation_problem(exc, MILESTONES) from exc


def _event(
    payload: Payload, event_id: uuid.UUID, occurred_at: datetime, source: str, site_id: str, entity_id: str
) -> OutboxEvent:
    envelope = Envelope.wrap(
        payload,
        event_id=event_id,
        occurred_at=occurred_at,
        source=source,
        site_id=site_id,
        entity_id=entity_id,
    )
    return OutboxEvent(
        envelope.event_id, topics.EDFLOW.name, site_id, envelope.to_json(), envelope.event_type
    )


def to_events(
    body: EdEventIn,
    *,
    source: str,
    org: Organisation,
    key: str,
    bounds: EventTimeBounds | None = None,
) -> list[OutboxEvent]:
    """The canonical events of one milestone (an ambulance arrival gives up to three); its times
    must be within `bounds` (by default those of a message received now)."""
    if body.site_id not in org.sites_by_id:
        raise Problem(
            422,
            "unknown-site",
            "Unknown site",
            f"site {body.site_id!r} is not in the organisation model",
            errors=[{"field": "site_id", "message": "not in the organisation model"}],
        )
    bounds = bounds or EventTimeBounds.at_receipt()
    bounds.check_json_field(body.occurred_at, "occurred_at")
    if isinstance(body, ArrivalIn) and body.ambulance is not None:
        bounds.check_json_field(body.ambulance.arrived_at, "ambulance.arrived_at")
        if body.ambulance.handover_at is not None:
            bounds.check_json_field(body.ambulance.handover_at, "ambulance.handover_at")
    event_id = body.event_id or content_event_id(
        key, _NAMESPACE, f"{source}|{body.model_dump_json(exclude={'event_id'})}"
    )
    site = body.site_id
    attendance = pseudonymise(key, IdKind.attendance, body.attendance_id, issuer=site)
    patient = (
        patient_pseudonym(key, nhs_number=body.patient.nhs_number, mrn=body.patient.mrn, mrn_issuer=site)
        if body.patient is not None
        else None
    )
    common = {"attendance_id": attendance, "patient_id": patient}
    payload: Payload
    match body:
        case ArrivalIn():
            payload = EdArrived(mode=body.mode, **common)
        case InitialAssessmentIn():
            assert isinstance(body.acuity, int)  # the validator made it a level
            payload = EdAssessed(acuity=body.acuity, **common)
        case SeenForTreatmentIn():
            payload = EdSeen(**common)
        case DecisionToAdmitIn():
            payload = EdDecisionToAdmit(specialty=body.specialty, **common)
        case ClinicallyReadyIn():
            payload = EdClinicallyReady(**common)
        case ConclusionIn():
            payload = EdConcluded(**common)
        case DepartureIn():
            payload = EdDeparted(disposition=body.disposition, **common)
    events = [_event(payload, event_id, body.occurred_at, source, site, attendance)]
    if isinstance(body, ArrivalIn) and body.ambulance is not None:
        ambulance = body.ambulance
        handover = pseudonymise(key, IdKind.handover, ambulance.handover_id, issuer=site)
        events.append(
            _event(
                AmbulanceArrived(handover_id=handover, attendance_id=attendance),
                name_based_id(_NAMESPACE, f"{event_id}|ambulance.arrived"),
                ambulance.arrived_at,
                source,
                site,
                handover,
            )
        )
        if ambulance.handover_at is not None:
            events.append(
                _event(
                    AmbulanceHandedOver(
                        handover_id=handover, attendance_id=attendance, arrived_at=ambulance.arrived_at
                    ),
                    name_based_id(_NAMESPACE, f"{event_id}|ambulance.handed_over"),
                    ambulance.handover_at,
                    source,
                    site,
                    handover,
                )
            )
    return events


def map_message(
    raw: bytes, *, source: str, org: Organisation, key: str, bounds: EventTimeBounds | None = None
) -> list[OutboxEvent]:
    """One JSON milestone → its events; a `Problem` (422) naming the field when it cannot be."""
    return to_events(parse(raw), source=source, org=org, key=key, bounds=bounds)
