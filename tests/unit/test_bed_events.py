"""The bed-management webhook body → an outbox event, with content-derived ids and location checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.ingest.bed_events import BedEventIn, to_event
from shared.events import BedStatus, BedStatusChanged, Envelope
from shared.organisation import Organisation, load_organisation
from shared.problems import Problem

pytestmark = pytest.mark.unit

SAMPLE_ORG = Path(__file__).resolve().parents[2] / "deploy/org/sample-icb.yaml"
OCCURRED = datetime(2025, 2, 3, 14, 5, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sample_org() -> Organisation:
    return load_organisation(SAMPLE_ORG)


def body(**overrides: Any) -> BedEventIn:
    fields: dict[str, Any] = {
        "site_id": "RXN01",
        "ward_id": "RXN01-AMU",
        "bed_id": "RXN01-AMU-B2-3",
        "status": "occupied",
        "occurred_at": OCCURRED.isoformat(),
    }
    fields.update(overrides)
    return BedEventIn.model_validate(fields)


def test_valid_body_gives_an_outbox_event_on_the_beds_topic(sample_org: Organisation) -> None:
    event = to_event(body(), source="bedmgmt", org=sample_org)

    assert event.topic == "icc.beds.v1"
    assert event.key == "RXN01"
    assert event.event_type == "bed.status_changed"

    envelope = Envelope.from_json(event.value)
    assert envelope.event_id == event.event_id
    assert envelope.source == "bedmgmt"
    assert envelope.site_id == "RXN01"
    assert envelope.entity_id == "RXN01-AMU-B2-3"
    assert envelope.occurred_at == OCCURRED
    assert envelope.payload == BedStatusChanged(
        ward_id="RXN01-AMU", bed_id="RXN01-AMU-B2-3", status=BedStatus.occupied
    )


def test_event_of_the_second_site_is_keyed_by_that_site(sample_org: Organisation) -> None:
    event = to_event(
        body(site_id="RXN02", ward_id="RXN02-MAU", bed_id="RXN02-MAU-ESC-1", status="closed"),
        source="bedmgmt",
        org=sample_org,
    )
    assert event.key == "RXN02"
    payload = Envelope.from_json(event.value).payload
    assert isinstance(payload, BedStatusChanged)
    assert payload.bed_id == "RXN02-MAU-ESC-1"
    assert payload.status is BedStatus.closed


def test_sender_event_id_is_kept(sample_org: Organisation) -> None:
    sender_id = uuid.uuid4()
    event = to_event(body(event_id=str(sender_id)), source="bedmgmt", org=sample_org)
    assert event.event_id == sender_id
    assert Envelope.from_json(event.value).event_id == sender_id


def test_same_body_without_event_id_gives_the_same_derived_id(sample_org: Organisation) -> None:
    first = to_event(body(), source="bedmgmt", org=sample_org)
    second = to_event(body(), source="bedmgmt", org=sample_org)

    assert first.event_id == second.event_id
    assert first.event_id.version == 5  # derived from content, not random
    assert Envelope.from_json(second.value).event_id == first.event_id


def test_derived_id_ignores_surrounding_whitespace(sample_org: Organisation) -> None:
    plain = to_event(body(), source="bedmgmt", org=sample_org)
    padded = to_event(body(bed_id="  RXN01-AMU-B2-3 "), source="bedmgmt", org=sample_org)
    assert plain.event_id == padded.event_id


@pytest.mark.parametrize(
    "change",
    [
        {"status": "closed"},
        {"bed_id": "RXN01-AMU-B2-4"},
        {"occurred_at": "2025-02-03T14:05:01+00:00"},
    ],
    ids=["status", "bed", "time"],
)
def test_different_content_gives_a_different_derived_id(
    sample_org: Organisation, change: dict[str, str]
) -> None:
    base = to_event(body(), source="bedmgmt", org=sample_org)
    other = to_event(body(**change), source="bedmgmt", org=sample_org)
    assert base.event_id != other.event_id


def test_different_source_gives_a_different_derived_id(sample_org: Organisation) -> None:
    a = to_event(body(), source="bedmgmt", org=sample_org)
    b = to_event(body(), source="pas", org=sample_org)
    assert a.event_id != b.event_id


def _problem(sample_org: Organisation, **overrides: Any) -> Problem:
    with pytest.raises(Problem) as err:
        to_event(body(**overrides), source="bedmgmt", org=sample_org)
    problem = err.value
    assert problem.status == 422
    assert problem.kind == "unknown-location"
    return problem


def test_unknown_ward_is_a_422_naming_ward_id(sample_org: Organisation) -> None:
    problem = _problem(sample_org, ward_id="RXN01-NOPE", bed_id="RXN01-NOPE-B1-1")
    assert [e["field"] for e in problem.extra["errors"]] == ["ward_id"]
    assert "RXN01-NOPE" in problem.detail
    body_json = problem.body("/v1/bed-events")
    assert body_json["status"] == 422
    assert body_json["type"].endswith("/unknown-location")
    assert body_json["errors"][0]["field"] == "ward_id"
    assert body_json["instance"] == "/v1/bed-events"


def test_ward_of_another_site_is_a_422_naming_ward_id(sample_org: Organisation) -> None:
    problem = _problem(sample_org, site_id="RXN02")  # RXN01-AMU belongs to RXN01
    assert [e["field"] for e in problem.extra["errors"]] == ["ward_id"]
    assert "RXN02" in problem.detail


def test_unknown_site_is_a_422_naming_ward_id(sample_org: Organisation) -> None:
    problem = _problem(sample_org, site_id="ZZZ99")
    assert problem.extra["errors"][0]["field"] == "ward_id"


def test_bed_of_another_ward_is_a_422_naming_bed_id(sample_org: Organisation) -> None:
    problem = _problem(sample_org, bed_id="RXN01-SAU-B1-1")  # a real bed, but on SAU
    assert [e["field"] for e in problem.extra["errors"]] == ["bed_id"]
    assert "RXN01-SAU-B1-1" in problem.detail
    assert "RXN01-AMU" in problem.detail


def test_unknown_bed_is_a_422_naming_bed_id(sample_org: Organisation) -> None:
    problem = _problem(sample_org, bed_id="RXN01-AMU-B99-1")
    assert problem.extra["errors"][0]["field"] == "bed_id"


@pytest.mark.parametrize(
    "override",
    [
        {"occurred_at": "2025-02-03T14:05:00"},
        {"status": "on_fire"},
        {"ward_id": ""},
        {"colour": "blue"},
    ],
    ids=["naive-time", "bad-status", "empty-ward", "extra-field"],
)
def test_body_validation(override: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        body(**override)
