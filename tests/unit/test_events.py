"""The event envelope: JSON round trip, strict validation, published schemas, time-ordered ids."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import (
    PAYLOAD_TYPES,
    SCHEMA_VERSION,
    BedStatus,
    BedStatusChanged,
    Envelope,
    WardBedCounts,
    WardStateChanged,
    json_schemas,
    name_based_id,
    new_event_id,
)

pytestmark = pytest.mark.unit

OCCURRED = datetime(2025, 3, 4, 10, 15, 30, 123456, tzinfo=UTC)


def bed_envelope(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "occurred_at": OCCURRED,
        "source": "bedmgmt",
        "site_id": "RXN01",
        "entity_id": "RXN01-AMU-B1-1",
    }
    fields.update(overrides)
    return Envelope.wrap(
        BedStatusChanged(ward_id="RXN01-AMU", bed_id="RXN01-AMU-B1-1", status=BedStatus.isolated), **fields
    )


def test_wrap_sets_event_type_and_defaults() -> None:
    before = datetime.now(UTC)
    env = bed_envelope()
    assert env.event_type == "bed.status_changed"
    assert env.schema_version == SCHEMA_VERSION == 1
    assert env.event_id.version == 7
    assert env.correlation_id is None
    assert before <= env.recorded_at <= datetime.now(UTC)


def test_round_trip_bed_status_changed() -> None:
    correlation = uuid.uuid4()
    env = bed_envelope(correlation_id=correlation)

    back = Envelope.from_json(env.to_json())

    assert back == env
    assert isinstance(back.payload, BedStatusChanged)
    assert back.payload.status is BedStatus.isolated
    assert back.payload.bed_id == "RXN01-AMU-B1-1"
    assert back.correlation_id == correlation
    assert back.occurred_at == OCCURRED
    assert back.occurred_at.utcoffset() == timedelta(0)


def test_round_trip_from_str() -> None:
    env = bed_envelope()
    assert Envelope.from_json(env.to_json().decode()) == env


def test_json_shape() -> None:
    env = bed_envelope()
    data = orjson.loads(env.to_json())
    assert data["event_id"] == str(env.event_id)
    assert data["event_type"] == "bed.status_changed"
    assert data["payload"] == {
        "event_type": "bed.status_changed",
        "ward_id": "RXN01-AMU",
        "bed_id": "RXN01-AMU-B1-1",
        "status": "isolated",
    }


def test_round_trip_keeps_the_instant_of_a_non_utc_time() -> None:
    local = OCCURRED.astimezone(timezone(timedelta(hours=1)))
    back = Envelope.from_json(bed_envelope(occurred_at=local).to_json())
    assert back.occurred_at == OCCURRED


def test_round_trip_ward_state_changed() -> None:
    summary = WardStateChanged(
        system_id="QXN",
        ward_id="RXN01-CCU",
        version=3,
        beds_total=2,
        available=1,
        counts=WardBedCounts(occupied=1, unoccupied=1),
        beds={"RXN01-CCU-B1-1": BedStatus.occupied, "RXN01-CCU-B1-2": BedStatus.unoccupied},
        as_of=OCCURRED,
    )
    env = Envelope.wrap(
        summary, occurred_at=OCCURRED, source="command-centre", site_id="RXN01", entity_id="x"
    )
    back = Envelope.from_json(env.to_json())
    assert back == env
    assert isinstance(back.payload, WardStateChanged)
    assert back.payload.counts.occupied == 1


def _json(env: Envelope) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(env.to_json())
    return data


def test_from_json_rejects_unknown_event_type() -> None:
    data = _json(bed_envelope())
    data["event_type"] = "bed.teleported"
    data["payload"]["event_type"] = "bed.teleported"
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))


def test_from_json_rejects_unknown_payload_event_type() -> None:
    data = _json(bed_envelope())
    data["payload"]["event_type"] = "bed.teleported"
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))


def test_from_json_rejects_envelope_event_type_that_disagrees_with_payload() -> None:
    # The envelope's event_type is the routing name of its payload; an unknown one must not be accepted.
    data = _json(bed_envelope())
    data["event_type"] = "bed.teleported"
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))


@pytest.mark.parametrize("field", ["occurred_at", "recorded_at"])
def test_from_json_rejects_naive_times(field: str) -> None:
    data = _json(bed_envelope())
    data[field] = "2025-03-04T10:15:30"
    with pytest.raises(ValidationError) as err:
        Envelope.from_json(orjson.dumps(data))
    assert err.value.errors()[0]["loc"] == (field,)
    assert err.value.errors()[0]["type"] == "timezone_aware"


def test_wrap_rejects_naive_occurred_at() -> None:
    with pytest.raises(ValidationError):
        bed_envelope(occurred_at=datetime(2025, 3, 4, 10, 15))


def test_from_json_rejects_extra_fields() -> None:
    data = _json(bed_envelope())
    data["surprise"] = True
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))
    data = _json(bed_envelope())
    data["payload"]["surprise"] = True
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))


def test_from_json_rejects_unknown_bed_status() -> None:
    data = _json(bed_envelope())
    data["payload"]["status"] = "on_fire"
    with pytest.raises(ValidationError):
        Envelope.from_json(orjson.dumps(data))


def test_bed_status_hl7_codes() -> None:
    assert {s.value: s.hl7_code for s in BedStatus} == {
        "occupied": "O",
        "unoccupied": "U",
        "closed": "C",
        "housekeeping": "H",
        "isolated": "I",
        "contaminated": "K",
    }


def test_json_schemas() -> None:
    schemas = json_schemas()
    assert {"envelope", "bed.status_changed", "ward.state_changed", "patient.swapped", "ed.arrived"} <= set(
        schemas
    )
    assert len(schemas) == len(PAYLOAD_TYPES) + 1
    assert "payload" in schemas["envelope"]["properties"]
    assert schemas["bed.status_changed"]["properties"]["event_type"]["const"] == "bed.status_changed"
    assert set(schemas["bed.status_changed"]["required"]) >= {"ward_id", "bed_id", "status"}
    assert "beds" in schemas["ward.state_changed"]["properties"]


def test_new_event_id_is_uuid7() -> None:
    event_id = new_event_id()
    assert isinstance(event_id, uuid.UUID)
    assert event_id.version == 7
    assert event_id.variant == uuid.RFC_4122
    # The first 48 bits are Unix milliseconds.
    millis = event_id.int >> 80
    assert abs(millis - time.time() * 1000) < 60_000


def test_new_event_ids_sort_by_creation() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert [i.bytes for i in ids] == sorted(i.bytes for i in ids)


def test_new_event_ids_sort_by_creation_across_milliseconds() -> None:
    first = new_event_id()
    time.sleep(0.002)
    second = new_event_id()
    assert first < second
    assert (first.int >> 80) < (second.int >> 80)


@given(namespace=st.uuids(), name=st.text())
def test_name_based_id_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert name_based_id(namespace, name) == uuid.uuid5(namespace, name)
