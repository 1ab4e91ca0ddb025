"""Bed management actions → bed events, with the organisation model's escalation rules (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.ingest.bed_management import map_message
from shared.events import BedNcrChanged, BedStatusChanged, Envelope
from shared.organisation import Organisation
from shared.problems import Problem

pytestmark = pytest.mark.unit

KEY = "q" * 48


def run(org: Organisation, action: str, bed: str, **extra: Any) -> Envelope:
    ward = "-".join(bed.split("-")[:2])
    raw = orjson.dumps(
        {
            "action": action,
            "site_id": bed.split("-")[0],
            "ward_id": ward,
            "bed_id": bed,
            "occurred_at": "2026-03-01T12:00:00+00:00",
            **extra,
        }
    )
    (event,) = map_message(raw, source="bedmgmt", org=org, key=KEY)
    return Envelope.from_json(event.value)


@pytest.mark.parametrize(
    ("action", "bed", "extra", "status"),
    [
        ("open_bed", "RXN01-AMU-B1-1", {}, "unoccupied"),
        ("close_bed", "RXN01-AMU-B1-1", {}, "closed"),
        ("open_escalation_bed", "RXN01-AMU-ESC-1", {}, "unoccupied"),
        ("close_escalation_bed", "RXN01-AMU-ESC-4", {}, "closed"),
        ("housekeeping", "RXN01-AMU-SR1-1", {}, "housekeeping"),
        ("isolate", "RXN01-AMU-SR2-1", {}, "isolated"),
        ("isolate", "RXN01-AMU-SR2-1", {"contaminated": True}, "contaminated"),
    ],
)
def test_status_actions(org: Organisation, action: str, bed: str, extra: dict[str, Any], status: str) -> None:
    event = run(org, action, bed, **extra)
    assert isinstance(event.payload, BedStatusChanged)
    assert (event.payload.bed_id, event.payload.status.value, event.entity_id) == (bed, status, bed)


def test_ncr_flags(org: Organisation) -> None:
    flagged = run(org, "ncr_flag", "RXN02-W1-B1-1")
    cleared = run(org, "ncr_unflag", "RXN02-W1-B1-1")
    assert isinstance(flagged.payload, BedNcrChanged) and isinstance(cleared.payload, BedNcrChanged)
    assert (flagged.payload.no_criteria_to_reside, cleared.payload.no_criteria_to_reside) == (True, False)
    assert flagged.site_id == "RXN02"


@pytest.mark.parametrize(
    ("action", "bed", "extra", "kind", "field"),
    [
        ("open_escalation_bed", "RXN01-SAU-B1-1", {}, "not-an-escalation-bed", "action"),  # SAU has none
        ("close_escalation_bed", "RXN01-AMU-B1-1", {}, "not-an-escalation-bed", "action"),
        ("open_bed", "RXN01-AMU-ESC-1", {}, "escalation-bed", "action"),
        ("close_bed", "RXN01-AMU-ESC-1", {}, "escalation-bed", "action"),
        ("housekeeping", "RXN01-AMU-B1-1", {"contaminated": True}, "validation", "contaminated"),
        ("open_bed", "RXN01-AMU-B9-1", {}, "unknown-location", "bed_id"),
    ],
)
def test_refusals(
    org: Organisation, action: str, bed: str, extra: dict[str, Any], kind: str, field: str
) -> None:
    with pytest.raises(Problem) as refused:
        run(org, action, bed, **extra)
    assert (refused.value.status, refused.value.kind) == (422, kind)
    assert refused.value.extra["errors"][0]["field"] == field


def test_unknown_action_is_a_validation_error(org: Organisation) -> None:
    with pytest.raises(Problem) as refused:
        run(org, "demolish", "RXN01-AMU-B1-1")
    assert refused.value.extra["errors"][0]["field"] == "action"
