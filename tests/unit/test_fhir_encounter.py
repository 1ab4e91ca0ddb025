"""FHIR Encounter versions → canonical events, given what was known before (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.ingest.fhir_encounter import KnownEncounter, Mapped, Unmappable, map_encounter
from services.ingest.fhir_validation import validate_encounter
from shared.events import Envelope, Location
from shared.location_map import LocationMapFile, LocationMapper
from shared.organisation import Organisation

pytestmark = pytest.mark.unit

KEY = "f" * 48
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def resource(
    status: str, klass: str = "IMP", location: str | None = "AMU^B1^1^RXN01", **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": status,
        "class": {"code": klass},
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
        **extra,
    }
    if location is not None:
        data["location"] = [{"location": {"identifier": {"value": location}}, "status": "active"}]
    return data


class Feed:
    """Sends successive versions of one Encounter, carrying the known state like ingest does."""

    def __init__(self, org: Organisation, mapper: LocationMapper | None = None) -> None:
        self.mapper = mapper or LocationMapper(org)
        self.known: KnownEncounter | None = None
        self.version = 0

    def send(self, data: dict[str, Any], version: str | None = None) -> Mapped:
        self.version += 1
        mapped = map_encounter(
            validate_encounter(data),
            self.known,
            self.mapper,
            key=KEY,
            source="pas",
            version_id=version or str(self.version),
            received_at=NOW,
        )
        self.known = mapped.known
        return mapped


def types(mapped: Mapped) -> list[str]:
    return [e.event_type for e in mapped.events]


def payload(mapped: Mapped, n: int = 0) -> dict[str, Any]:
    return Envelope.from_json(mapped.events[n].value).payload.model_dump()


def test_inpatient_lifecycle(org: Organisation) -> None:
    feed = Feed(org)
    assert types(
        feed.send(resource("planned", location=None, serviceProvider={"identifier": {"value": "RXN01"}}))
    ) == ["patient.preadmitted"]
    admitted = feed.send(resource("arrived"))
    assert types(admitted) == ["patient.admitted"]
    assert payload(admitted)["location"] == {
        "ward_id": "RXN01-AMU",
        "bed_id": "RXN01-AMU-B1-1",
        "pas_code": "AMU^B1^1^RXN01",
    }
    assert types(feed.send(resource("in-progress"))) == []  # same place: nothing changed
    moved = feed.send(resource("in-progress", location="WD12^B4^6^RXN01"))
    assert types(moved) == ["patient.transferred"]
    assert payload(moved)["previous"]["bed_id"] == "RXN01-AMU-B1-1"
    assert types(feed.send(resource("onleave", location="WD12^B4^6^RXN01"))) == ["patient.leave"]
    back = feed.send(resource("in-progress", location="WD14^B1^1^RXN01"))
    assert types(back) == ["patient.leave", "patient.transferred"]
    assert payload(back)["state"] == "ended"
    done = feed.send(
        resource(
            "finished",
            location=None,
            hospitalization={"dischargeDisposition": {"coding": [{"code": "other-hcf"}]}},
        )
    )
    assert types(done) == ["patient.discharged"]
    assert payload(done)["reason"] == "transferred_out"
    assert payload(done)["location"]["ward_id"] == "RXN01-WD14"  # the last known place
    assert types(feed.send(resource("finished", location=None))) == []


def test_cancellation_and_entered_in_error(org: Organisation) -> None:
    for status in ("cancelled", "entered-in-error"):
        feed = Feed(org)
        feed.send(resource("in-progress"))
        cancelled = feed.send(resource(status, location=None))
        assert types(cancelled) == ["patient.admission_cancelled"]
        assert payload(cancelled)["location"]["bed_id"] == "RXN01-AMU-B1-1"


def test_emergency_lifecycle_with_snomed_acuity(org: Organisation) -> None:
    feed = Feed(org)
    assert types(feed.send(resource("arrived", "EMER", "ED^^^RXN01"))) == ["ed.arrived"]
    triaged = feed.send(
        resource(
            "triaged",
            "EMER",
            "ED^^^RXN01",
            priority={"coding": [{"system": "http://snomed.info/sct", "code": "1077251000000100"}]},
        )
    )
    assert types(triaged) == ["ed.assessed"] and payload(triaged)["acuity"] == 5
    admitted = feed.send(resource("in-progress", "EMER", "CCU^B1^2^RXN01"))
    assert types(admitted) == ["patient.admitted"] and payload(admitted)["from_ed"] is True
    assert types(feed.send(resource("in-progress", "EMER", "WD11^B1^1^RXN01"))) == ["patient.transferred"]
    departed = feed.send(
        resource(
            "finished", "EMER", None, hospitalization={"dischargeDisposition": {"coding": [{"code": "home"}]}}
        )
    )
    assert types(departed) == ["ed.departed"] and payload(departed)["disposition"] == "discharged"


def test_ed_to_inpatient_class_change_is_an_admission_from_ed(org: Organisation) -> None:
    feed = Feed(org)
    feed.send(resource("in-progress", "EMER", "ED^^^RXN01"))
    admitted = feed.send(resource("in-progress", "IMP", "AMU^B2^1^RXN01"))
    assert types(admitted) == ["patient.admitted"] and payload(admitted)["from_ed"] is True


def test_other_classes_and_unknown_status_are_ignored(org: Organisation) -> None:
    assert Feed(org).send(resource("in-progress", "AMB")).outcome == "ignored"
    assert Feed(org).send(resource("unknown")).outcome == "ignored"
    assert Feed(org).send(resource("cancelled", "EMER", "ED^^^RXN01")).outcome == "ignored"


def test_older_numeric_version_is_stale(org: Organisation) -> None:
    feed = Feed(org)
    feed.send(resource("in-progress"), version="5")
    stale = feed.send(resource("in-progress", location="WD10^B1^1^RXN01"), version="4")
    assert stale.outcome == "stale" and stale.events == []
    assert feed.known is not None and feed.known.version_id == "5"


def test_unknown_ward_is_accepted_unmapped_with_a_warning(org: Organisation) -> None:
    mapped = Feed(org).send(resource("in-progress", location="WD99^B1^1^RXN01"))
    assert payload(mapped)["location"] == {"ward_id": None, "bed_id": None, "pas_code": "WD99^B1^1^RXN01"}
    assert [w.code for w in mapped.warnings] == ["code-unknown"]


def test_free_text_display_is_never_copied(org: Organisation) -> None:
    data = resource("in-progress", location=None, serviceProvider={"identifier": {"value": "RXN02"}})
    data["location"] = [{"location": {"display": "Mrs Smith's usual bed by the window"}, "status": "active"}]
    mapped = Feed(org).send(data)
    assert payload(mapped)["location"] == {"ward_id": None, "bed_id": None, "pas_code": ""}
    assert b"Smith" not in mapped.events[0].value
    assert mapped.events[0].key == "RXN02"


def test_no_site_is_unmappable_until_the_map_knows_the_facility(org: Organisation) -> None:
    with pytest.raises(Unmappable) as refused:
        Feed(org).send(resource("in-progress", location="AMU^B1^1^OLDFAC"))
    assert refused.value.issue.expression == "Encounter.location[0].location.identifier.value"
    fixed = LocationMapper(org, LocationMapFile(facilities={"OLDFAC": "RXN01"}))
    mapped = Feed(org, fixed).send(resource("in-progress", location="AMU^B1^1^OLDFAC"))
    assert payload(mapped)["location"]["bed_id"] == "RXN01-AMU-B1-1"


def test_events_are_pseudonymous_and_ids_stable_per_version(org: Organisation) -> None:
    first = Feed(org).send(resource("in-progress"))
    again = Feed(org).send(resource("in-progress"))
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    envelope = Envelope.from_json(first.events[0].value)
    assert envelope.entity_id.startswith("enc:") and envelope.payload.model_dump()["patient_id"].startswith(
        "nhs:"
    )
    assert b"9434765919" not in first.events[0].value and b"enc-1" not in first.events[0].value
    assert first.known is not None and first.known.location == Location(
        ward_id="RXN01-AMU", bed_id="RXN01-AMU-B1-1", pas_code="AMU^B1^1^RXN01"
    )


def test_ids_differing_only_in_punctuation_are_different_encounters(org: Organisation) -> None:
    from services.ingest.fhir_encounter import encounter_key

    one = validate_encounter({**resource("in-progress"), "id": "a-1"})
    other = validate_encounter({**resource("in-progress"), "id": "a1"})
    assert encounter_key(KEY, "pas", one) != encounter_key(KEY, "pas", other)
    assert encounter_key(KEY, "pas", one) != encounter_key(KEY, "pas2", one)
    assert encounter_key(KEY, "pas", one) == encounter_key(KEY, "pas", one)
