"""ED milestone JSON → canonical ED-flow events (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.ingest.ed_events import ACUITY_SNOMED, acuity_of, map_message
from shared.events import Envelope
from shared.organisation import Organisation
from shared.problems import Problem

pytestmark = pytest.mark.unit

KEY = "p" * 48
AT = datetime(2026, 1, 12, 10, 30, tzinfo=UTC)


def body(milestone: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "milestone": milestone,
            "site_id": "RXN02",
            "attendance_id": "A123",
            "occurred_at": AT.isoformat(),
            **fields,
        }
    )


def envelopes(raw: bytes, org: Organisation, source: str = "ed") -> list[Envelope]:
    return [Envelope.from_json(e.value) for e in map_message(raw, source=source, org=org, key=KEY)]


def test_ecds_acuity_codes() -> None:
    # NHS Data Model and Dictionary: EMERGENCY CARE ACUITY (SNOMED CT)
    assert ACUITY_SNOMED == {
        "1064891000000107": 1,
        "1064911000000105": 2,
        "1064901000000108": 3,
        "1077241000000103": 4,
        "1077251000000100": 5,
    }
    assert [acuity_of(n) for n in (1, "2", 3, 4, "5")] == [1, 2, 3, 4, 5]
    assert acuity_of(1064901000000108) == 3  # sent as a JSON number
    for bad in (0, 6, "urgent", "1077231000000107", ""):
        with pytest.raises(ValueError):
            acuity_of(bad)


def test_ambulance_arrival_gives_three_events_at_their_own_times(org: Organisation) -> None:
    arrived = AT - timedelta(minutes=40)
    raw = body(
        "arrival",
        mode="ambulance",
        ambulance={
            "handover_id": "INC-1",
            "arrived_at": arrived.isoformat(),
            "handover_at": (arrived + timedelta(minutes=35)).isoformat(),
        },
        patient={"nhs_number": "943 476 5919"},
    )
    ed, ambulance, handover = envelopes(raw, org)
    assert [e.event_type for e in (ed, ambulance, handover)] == [
        "ed.arrived",
        "ambulance.arrived",
        "ambulance.handed_over",
    ]
    assert (ed.occurred_at, ambulance.occurred_at, handover.occurred_at) == (
        AT,
        arrived,
        arrived + timedelta(minutes=35),
    )
    assert {e.site_id for e in (ed, ambulance, handover)} == {"RXN02"}
    assert ambulance.entity_id == handover.entity_id and ambulance.entity_id.startswith("amb:")
    text = b"".join(e.to_json() for e in (ed, ambulance, handover))
    assert b"INC-1" not in text and b"A123" not in text and b"9434765919" not in text
    # without a handover time, no handover event
    no_handover = body(
        "arrival", mode="ambulance", ambulance={"handover_id": "INC-2", "arrived_at": AT.isoformat()}
    )
    assert [e.event_type for e in envelopes(no_handover, org)] == ["ed.arrived", "ambulance.arrived"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mode": "ambulance"}, "<body>"),  # an ambulance arrival needs its ambulance block
        ({"mode": "walk-in", "ambulance": {"handover_id": "X", "arrived_at": AT.isoformat()}}, "<body>"),
        (
            {
                "mode": "ambulance",
                "ambulance": {
                    "handover_id": "X",
                    "arrived_at": AT.isoformat(),
                    "handover_at": (AT - timedelta(minutes=1)).isoformat(),
                },
            },
            "ambulance",
        ),
        ({"mode": "teleport"}, "mode"),
        ({"mode": "walk_in", "patient": {"nhs_number": "1234567890"}}, "patient.nhs_number"),
        ({"mode": "walk_in", "patient": {"name": "Ada"}}, "patient.name"),
        ({"mode": "walk_in", "occurred_at": "2026-01-12T10:30:00"}, "occurred_at"),
    ],
)
def test_invalid_arrivals_name_the_field(org: Organisation, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(Problem) as refused:
        envelopes(body("arrival", **fields), org)
    assert refused.value.status == 422
    assert [e["field"] for e in refused.value.extra["errors"]] == [field]


def test_unknown_milestone_and_site(org: Organisation) -> None:
    with pytest.raises(Problem) as refused:
        envelopes(body("triage_dance"), org)
    assert refused.value.extra["errors"][0]["field"] == "milestone"
    with pytest.raises(Problem) as unknown:
        envelopes(orjson.dumps({**orjson.loads(body("conclusion")), "site_id": "RXZ99"}), org)
    assert unknown.value.kind == "unknown-site"


def test_content_ids_are_stable_and_keyed(org: Organisation) -> None:
    raw = body("seen_for_treatment", patient={"mrn": "M-77"})
    (first,) = envelopes(raw, org)
    (second,) = envelopes(raw, org)
    assert first.event_id == second.event_id
    (other_source,) = envelopes(raw, org, source="ed2")
    assert other_source.event_id != first.event_id
    given = uuid.uuid4()
    (chosen,) = envelopes(body("seen_for_treatment", event_id=str(given)), org)
    assert chosen.event_id == given


@pytest.mark.parametrize(
    ("milestone", "fields", "event_type", "payload"),
    [
        ("initial_assessment", {"acuity": "1077241000000103"}, "ed.assessed", {"acuity": 4}),
        ("seen_for_treatment", {}, "ed.seen", {}),
        (
            "decision_to_admit",
            {"specialty": "cardiology"},
            "ed.decision_to_admit",
            {"specialty": "cardiology"},
        ),
        ("clinically_ready_to_proceed", {}, "ed.clinically_ready", {}),
        ("conclusion", {}, "ed.concluded", {}),
        (
            "departure",
            {"disposition": "left-before-treatment"},
            "ed.departed",
            {"disposition": "left_before_treatment"},
        ),
    ],
)
def test_milestones(
    org: Organisation, milestone: str, fields: dict[str, Any], event_type: str, payload: dict[str, Any]
) -> None:
    (event,) = envelopes(body(milestone, **fields), org)
    assert event.event_type == event_type
    dumped = event.payload.model_dump()
    assert {k: dumped[k] for k in payload} == payload
    assert dumped["attendance_id"].startswith("att:")
