"""FHIR validation: the fast model agrees with fhir.resources, errors name their element, answers are FHIR."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.fhir_api import operation_outcome, outcome_issue
from services.ingest.fhir_validation import (
    FastBundleShell,
    FastEncounter,
    FhirInvalid,
    Issue,
    facts_of,
    parse_body,
    validate_encounter,
    validate_entry,
)

pytestmark = pytest.mark.unit

VALID_DATETIMES = [
    "2026-11-26T09:00:00Z",
    "2026-11-26T09:00:00.123+01:00",
    "2026-11-26T09:00:60Z",
    "2026-11",
    "2026",
]
INVALID_DATETIMES = ["2026-11-26T09:00:00", "26/11/2026", ""]  # a time needs a zone; not a FHIR date; empty


def mostly(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """Valid values most of the time, so that both validators' acceptance is exercised, not only refusal."""
    return st.sampled_from(valid * 6 + invalid)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(None), strategy)


datetimes = mostly(VALID_DATETIMES, INVALID_DATETIMES)
strings = mostly(["AMU^B1^1^RXN01", "WD10", "Ward 10, side room", " padded "], ["", "\t"])
codings = st.fixed_dictionaries(
    {},
    optional={
        "system": mostly(["http://snomed.info/sct", "urn:x"], ["has space", ""]),
        "code": mostly(["IMP", "EMER", "1064911000000105", "a b"], [" x", "", 7]),
        "display": strings,
        "userSelected": st.booleans(),  # not in the fast model: always the full path
    },
)
concepts = st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=2), "text": strings})
identifiers = st.fixed_dictionaries(
    {},
    optional={
        "system": mostly(["https://fhir.nhs.uk/Id/nhs-number", "urn:mrn"], ["bad uri"]),
        "value": mostly(["9434765919", "M1"], ["", "  "]),
        "use": mostly(["official", "usual"], ["bad code "]),
    },
)
references = st.fixed_dictionaries(
    {},
    optional={
        "reference": mostly(["Patient/1", "Location/AMU"], [""]),
        "identifier": identifiers,
        "display": strings,
        "type": mostly(["Location"], ["not a uri"]),
    },
)
periods = st.fixed_dictionaries({}, optional={"start": datetimes, "end": datetimes})
locations = st.fixed_dictionaries(
    {"location": references},
    optional={"status": mostly(["active", "completed", "planned"], ["", "act ive"]), "period": periods},
)
strays = st.sampled_from([{}] * 8 + [{"_status": {"id": "x"}}, {"colour": "blue"}, {"location": [None]}])
encounters = st.builds(
    lambda base, stray: {**base, **stray},
    st.fixed_dictionaries(
        {
            "resourceType": st.just("Encounter"),
            "status": mostly(["planned", "in-progress", "finished", "bogus"], [" planned", "", None]),
            "class": st.one_of(codings, st.just("IMP")),
        },
        optional={
            "id": mostly(["e1", "a.b-C9"], ["has space", "", "x" * 65]),
            "meta": st.fixed_dictionaries(
                {}, optional={"versionId": mostly(["1", "12"], ["a b", ""]), "lastUpdated": datetimes}
            ),
            "identifier": st.lists(identifiers, max_size=2),
            "subject": references,
            "period": periods,
            "priority": concepts,
            "serviceType": concepts,
            "hospitalization": st.fixed_dictionaries(
                {}, optional={"admitSource": concepts, "dischargeDisposition": concepts}
            ),
            "location": st.lists(locations, max_size=3),
            "serviceProvider": references,
        },
    ),
    strays,
)


def accepted(model: Any, data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encounters)
def test_what_the_fast_model_accepts_fhir_resources_accepts_with_the_same_facts(data: dict[str, Any]) -> None:
    fast = accepted(FastEncounter, data)
    if fast is None:
        return
    full = accepted(FhirEncounter, data)
    assert full is not None, data
    assert facts_of(fast) == facts_of(full)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "resourceType": st.just("Bundle"),
            "type": st.sampled_from(["transaction", "batch", "bad type", ""]),
        },
        optional={
            "id": st.sampled_from(["b1", "no spaces allowed"]),
            "timestamp": datetimes,
            "entry": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "fullUrl": st.sampled_from(["urn:uuid:1", "bad url"]),
                        "request": st.fixed_dictionaries(
                            {
                                "method": st.sampled_from(["PUT", "POST", "P UT"]),
                                "url": st.sampled_from(["Encounter/1", ""]),
                            },
                            optional={"ifMatch": st.just('W/"1"')},
                        ),
                    },
                ),
                max_size=3,
            ),
        },
    )
)
def test_fast_bundle_shell_is_a_subset_of_fhir_resources(data: dict[str, Any]) -> None:
    fast = accepted(FastBundleShell, data)
    if fast is not None:
        full = accepted(FhirBundle, data)
        assert full is not None, data
        assert full.type == fast.type and len(full.entry or []) == len(fast.entry or [])


TYPICAL = {
    "resourceType": "Encounter",
    "id": "e1",
    "meta": {"versionId": "3", "lastUpdated": "2026-11-26T09:00:00Z"},
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "identifier": [{"system": "urn:visit", "value": "V1"}],
    "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
    "period": {"start": "2026-11-26T08:00:00Z"},
    "location": [
        {"location": {"identifier": {"value": "AMU^B1^1^RXN01"}}, "status": "completed"},
        {
            "location": {"identifier": {"value": "WD10^B2^3^RXN01"}},
            "status": "active",
            "period": {"start": "2026-11-26T09:00:00Z"},
        },
    ],
}


def test_a_typical_pas_encounter_takes_the_fast_path_and_reads_the_active_location() -> None:
    assert accepted(FastEncounter, TYPICAL) is not None
    facts = validate_encounter(TYPICAL)
    assert (facts.resource_id, facts.version_id, facts.status, facts.class_code) == (
        "e1",
        "3",
        "in-progress",
        "IMP",
    )
    assert facts.nhs_number == "9434765919" and facts.mrn is None
    assert facts.location_code == "WD10^B2^3^RXN01"
    assert facts.location_expression == "Encounter.location[1].location.identifier.value"
    assert facts.location_start is not None and facts.location_start.hour == 9


def test_elements_outside_the_fast_model_still_validate_through_fhir_resources() -> None:
    resource = {**TYPICAL, "participant": [{"individual": {"reference": "Practitioner/1"}}]}
    assert accepted(FastEncounter, resource) is None
    assert validate_encounter(resource).location_code == "WD10^B2^3^RXN01"
    assert validate_encounter(TYPICAL, fast=False) == validate_encounter(TYPICAL)


@pytest.mark.parametrize(
    ("change", "code", "expression"),
    [
        ({"status": "discharged"}, "code-invalid", "Encounter.status"),
        ({"status": None}, "required", "Encounter.status"),
        ({"class": {"system": "urn:x"}}, "required", "Encounter.class.code"),
        ({"period": {"start": "2026-11-26T09:00:00"}}, "value", "Encounter.period.start"),
        ({"location": [{"status": "active"}]}, "required", "Encounter.location[0].location"),
        ({"colour": "blue"}, "structure", "Encounter.colour"),
    ],
)
def test_errors_name_the_element(change: dict[str, Any], code: str, expression: str) -> None:
    with pytest.raises(FhirInvalid) as invalid:
        validate_encounter({**TYPICAL, **change})
    issue = invalid.value.issues[0]
    assert (issue.code, issue.expression) == (code, expression)


def test_bundle_entries_are_located_in_the_bundle() -> None:
    raw = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": TYPICAL, "request": {"method": "PUT", "url": "Encounter/e1"}},
                {
                    "resource": {**TYPICAL, "status": "walking"},
                    "request": {"method": "PUT", "url": "Encounter/e1"},
                },
                {"resource": TYPICAL, "request": {"method": "DELETE", "url": "Encounter/e1"}},
            ],
        }
    )
    parsed = parse_body(raw)
    assert parsed.bundle_type == "batch" and len(parsed.entries) == 3
    assert validate_entry(parsed.entries[0], "batch").status == "in-progress"
    for entry, expression in (
        (parsed.entries[1], "Bundle.entry[1].resource.status"),
        (parsed.entries[2], "Bundle.entry[2].request.method"),
    ):
        with pytest.raises(FhirInvalid) as invalid:
            validate_entry(entry, "batch")
        assert invalid.value.issues[0].expression == expression


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "structure"),
        (b"[]", "structure"),
        (orjson.dumps({"resourceType": "Patient"}), "not-supported"),
        (
            orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": TYPICAL}]}),
            "not-supported",
        ),
        (orjson.dumps({"resourceType": "Bundle", "type": "batch"}), "required"),
    ],
)
def test_bodies_that_are_not_an_encounter_or_a_usable_bundle(body: bytes, code: str) -> None:
    with pytest.raises(FhirInvalid) as invalid:
        parse_body(body)
    assert invalid.value.issues[0].code == code


def test_answers_are_valid_fhir() -> None:
    import uuid

    outcome = operation_outcome(
        [
            outcome_issue("accepted", "accepted: 1 event(s)", [uuid.uuid4()]),
            Issue(
                "code-unknown", "not in the map", "Encounter.location[0].location.identifier.value", "warning"
            ),
        ]
    )
    OperationOutcome.model_validate(outcome)
    FhirBundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [{"response": {"status": "200 OK", "etag": 'W/"1"', "outcome": outcome}}],
        }
    )


def test_a_whole_bundle_takes_the_fast_path_with_the_same_facts_as_the_long_way() -> None:
    raw = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {**TYPICAL, "id": f"e{n}"},
                    "request": {"method": "PUT", "url": f"Encounter/e{n}"},
                }
                for n in range(3)
            ],
        }
    )
    quick, slow = parse_body(raw), parse_body(raw, fast=False)
    assert all(e.model is not None and e.resource is None for e in quick.entries)
    assert all(e.model is None and e.resource is not None for e in slow.entries)
    assert [validate_entry(e, "transaction") for e in quick.entries] == [
        validate_entry(e, "transaction", fast=False) for e in slow.entries
    ]
    assert quick.resource_of(quick.entries[2]) == slow.entries[2].resource
    single = parse_body(orjson.dumps(TYPICAL))
    assert single.bundle_type is None and single.entries[0].model is not None
    assert single.resource_of(single.entries[0]) == TYPICAL
