"""Event times out of bounds (far ahead of receipt, or before 1990) are refused by every interface,
each naming the field in its own kind of answer (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.ingest import bed_events, bed_management, ed_events
from services.ingest.event_time_bounds import EARLIEST, EventTimeBounds
from services.ingest.fhir_encounter import Unmappable, map_encounter
from services.ingest.fhir_validation import validate_encounter
from services.ingest.hl7_adt import map_adt
from services.ingest.hl7_er7 import AckCode, ErrorCode, Hl7Error, content_sha256, read_message
from shared.location_map import LocationMapper
from shared.organisation import Organisation
from shared.problems import Problem
from shared.settings import get_settings
from tests.hl7_samples import adt, evn, msh, pid, pv1

pytestmark = pytest.mark.unit

KEY = "t" * 48
RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BOUNDS = EventTimeBounds(RECEIVED, timedelta(seconds=300))
FAR_FUTURE = datetime(2205, 1, 1, 12, 0, tzinfo=UTC)
TOO_EARLY = datetime(1989, 12, 31, 23, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "taken"),
    [
        (RECEIVED - timedelta(days=400), True),
        (RECEIVED + timedelta(seconds=300), True),  # the drift allowed, exactly
        (RECEIVED + timedelta(seconds=301), False),
        (FAR_FUTURE, False),
        (EARLIEST, True),
        (TOO_EARLY, False),
    ],
)
def test_the_rule(when: datetime, taken: bool) -> None:
    assert (BOUNDS.refusal(when) is None) is taken


def test_the_reason_says_what_is_wrong() -> None:
    ahead = BOUNDS.refusal(FAR_FUTURE)
    assert ahead is not None and "2205-01-01T12:00:00+00:00" in ahead and "300 s" in ahead
    early = BOUNDS.refusal(TOO_EARLY)
    assert early is not None and "before 1990-01-01" in early


@pytest.fixture
def skew_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ICC_MAX_FUTURE_SKEW_SECONDS", "30")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("skew_setting")
def test_the_drift_allowed_is_the_setting_and_now_is_the_receipt_time() -> None:
    bounds = EventTimeBounds.at_receipt(RECEIVED)
    assert bounds == EventTimeBounds(RECEIVED, timedelta(seconds=30))
    assert bounds.refusal(RECEIVED + timedelta(seconds=31)) is not None


# ── HL7 v2: AE with ERR naming the field the time was read from ───────────────────────────


def hl7_error(text: str, mapper: LocationMapper) -> Hl7Error:
    message = text.rstrip("\r")
    with pytest.raises(Hl7Error) as caught:
        map_adt(
            read_message(message),
            source="pas",
            content_sha256=content_sha256(message),
            mapper=mapper,
            pseudonymise=lambda kind, value, issuer: f"{kind}:{value}",
            bounds=BOUNDS,
        )
    return caught.value


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (adt("A01", "F1", pid(), pv1()).replace(evn("A01"), evn("A01", occurred="22050101120000")), "EVN-6"),
        (adt("A03", "F2", pid(), pv1()).replace(evn("A03"), evn("A03", "22050101120000")), "EVN-2"),
        (adt("A02", "F3", pid(), pv1()).replace(evn("A02"), evn("A02", "19891231120000")), "EVN-2"),
        ("\r".join([msh("A01", "F4"), pid(), pv1(admitted="22050101120000")]), "PV1-44"),
        ("\r".join([msh("A03", "F5"), pid(), pv1(discharged="22050101120000")]), "PV1-45"),
        ("\r".join([msh("A02", "F6", sent="22050101120000"), pid(), pv1()]), "MSH-7"),
    ],
)
def test_hl7_event_time_out_of_bounds_is_an_ae_naming_the_field(
    text: str, where: str, org: Organisation
) -> None:
    error = hl7_error(text, LocationMapper(org))
    assert error.ack is AckCode.error and error.problem.code is ErrorCode.data_type_error
    assert str(error.problem.location) == where and where in error.problem.message
    assert error.header is not None  # the ACK names the message


def test_hl7_times_within_bounds_are_taken(org: Organisation) -> None:
    text = adt("A01", "OK1", pid(), pv1()).replace(evn("A01"), evn("A01", "20261126120400"))
    message = text.rstrip("\r")
    result = map_adt(
        read_message(message),
        source="pas",
        content_sha256=content_sha256(message),
        mapper=LocationMapper(org),
        pseudonymise=lambda kind, value, issuer: f"{kind}:{value}",
        bounds=BOUNDS,
    )
    (envelope,) = result.envelopes
    assert envelope.occurred_at == datetime(2026, 11, 26, 12, 4, tzinfo=UTC)  # 4 minutes ahead: drift


# ── FHIR: OperationOutcome issue naming the element ──────────────────────────────────────


def encounter(status: str, klass: str = "IMP", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": status,
        "class": {"code": klass},
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
        "location": [{"location": {"identifier": {"value": "AMU^B1^1^RXN01"}}, "status": "active"}],
        **extra,
    }


def map_fhir(data: dict[str, Any], org: Organisation) -> Any:
    return map_encounter(
        validate_encounter(data),
        None,
        LocationMapper(org),
        key=KEY,
        source="pas",
        version_id="1",
        received_at=RECEIVED,
        bounds=BOUNDS,
    )


@pytest.mark.parametrize(
    ("data", "expression"),
    [
        (encounter("arrived", meta={"lastUpdated": "2205-01-01T12:00:00Z"}), "Encounter.meta.lastUpdated"),
        (encounter("finished", period={"end": "2205-01-01T12:00:00Z"}), "Encounter.period.end"),
        (
            encounter("arrived", klass="EMER", period={"start": "1989-06-01T12:00:00Z"}),
            "Encounter.period.start",
        ),
        (
            {
                **encounter("in-progress"),
                "location": [
                    {
                        "location": {"identifier": {"value": "AMU^B1^1^RXN01"}},
                        "status": "active",
                        "period": {"start": "2205-01-01T12:00:00Z"},
                    }
                ],
            },
            "Encounter.location[0].period.start",
        ),
    ],
)
def test_fhir_event_time_out_of_bounds_refuses_the_version_naming_the_element(
    data: dict[str, Any], expression: str, org: Organisation
) -> None:
    with pytest.raises(Unmappable) as caught:
        map_fhir(data, org)
    issue = caught.value.issue
    assert (issue.code, issue.severity, issue.expression) == ("value", "error", expression)
    assert expression in issue.diagnostics


def test_fhir_planned_admission_date_is_not_an_event_time(org: Organisation) -> None:
    mapped = map_fhir(encounter("planned", period={"start": "2027-03-01T09:00:00Z"}), org)
    assert [e.event_type for e in mapped.events] == ["patient.preadmitted"]


# ── JSON (ED milestones, bed management, bed status): 422 naming the field ───────────────


def json_problem(run: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        run()
    assert caught.value.status == 422
    return caught.value


def ed(org: Organisation, **fields: Any) -> list[Any]:
    raw = orjson.dumps(
        {
            "milestone": "arrival",
            "site_id": "RXN02",
            "attendance_id": "A1",
            "mode": "walk_in",
            "occurred_at": "2026-11-26T11:00:00Z",
            **fields,
        }
    )
    return ed_events.map_message(raw, source="ed", org=org, key=KEY, bounds=BOUNDS)


def bed(org: Organisation, module: Any, **fields: Any) -> list[Any]:
    body = {
        "site_id": "RXN01",
        "ward_id": "RXN01-AMU",
        "bed_id": "RXN01-AMU-B1-1",
        "occurred_at": "2026-11-26T11:00:00Z",
        **fields,
    }
    if module is bed_management:
        raw = orjson.dumps({"action": "close_bed", **body})
        return bed_management.map_message(raw, source="bedmgmt", org=org, key=KEY, bounds=BOUNDS)
    raw = orjson.dumps({"status": "closed", **body})
    return bed_events.map_message(raw, source="bedmgmt", org=org, bounds=BOUNDS)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"occurred_at": "2205-01-01T12:00:00Z"}, "occurred_at"),
        ({"occurred_at": "1970-01-01T00:00:00Z"}, "occurred_at"),
        (
            {"mode": "ambulance", "ambulance": {"handover_id": "H1", "arrived_at": "2205-01-01T12:00:00Z"}},
            "ambulance.arrived_at",
        ),
        (
            {
                "mode": "ambulance",
                "ambulance": {
                    "handover_id": "H1",
                    "arrived_at": "2026-11-26T10:50:00Z",
                    "handover_at": "2205-01-01T12:00:00Z",
                },
            },
            "ambulance.handover_at",
        ),
    ],
)
def test_ed_milestone_time_out_of_bounds_is_a_422_naming_the_field(
    fields: dict[str, Any], field: str, org: Organisation
) -> None:
    problem = json_problem(lambda: ed(org, **fields))
    assert problem.extra["errors"][0]["field"] == field and problem.detail.startswith(field)


@pytest.mark.parametrize("module", [bed_management, bed_events])
@pytest.mark.parametrize("when", ["2205-01-01T12:00:00Z", "1989-12-31T23:59:00Z"])
def test_bed_time_out_of_bounds_is_a_422_naming_the_field(module: Any, when: str, org: Organisation) -> None:
    problem = json_problem(lambda: bed(org, module, occurred_at=when))
    assert problem.extra["errors"] == [
        {"field": "occurred_at", "message": BOUNDS.refusal(datetime.fromisoformat(when))}
    ]


@pytest.mark.parametrize("module", [bed_management, bed_events])
def test_bed_time_within_the_drift_is_taken(module: Any, org: Organisation) -> None:
    assert len(bed(org, module, occurred_at="2026-11-26T12:04:59Z")) == 1
