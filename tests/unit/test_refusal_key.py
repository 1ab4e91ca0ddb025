"""What makes two refusals the same one (the quarantine counts the second on the first's row)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.intake import refusal_key

BODY = hashlib.sha256(b'{"bed_id": "RXN01-AMU-B1-1"}').digest()


def future_refusal(received_at: datetime) -> dict[str, object]:
    """The problem answered for an event time in the future: its wording carries the receipt time."""
    bounds = EventTimeBounds(received_at, timedelta(minutes=5))
    reason = bounds.refusal(received_at + timedelta(days=365))
    assert reason is not None
    return {
        "type": "https://icc.invalid/problems/event-time-out-of-range",
        "status": 422,
        "detail": f"occurred_at: {reason}",
        "errors": [{"field": "occurred_at", "message": reason}],
    }


def key(problem: object, *, source: str | None = "ed", body: bytes = BODY, status: int = 422) -> bytes:
    return refusal_key(source, "/v1/ed-events", "application/json", status, problem, body)


def test_the_same_refusal_sent_again_later_is_the_same_one() -> None:
    first = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    later = future_refusal(first + timedelta(minutes=3))
    assert future_refusal(first) != later  # the wording differs…
    assert key(future_refusal(first)) == key(later)  # …the reason does not


def test_another_reason_body_source_or_status_is_another_refusal() -> None:
    problem = future_refusal(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    other_field = {**problem, "errors": [{"field": "ambulance.handover_at", "message": "…"}]}
    assert key(other_field) != key(problem)
    assert key(problem, body=hashlib.sha256(b"{}").digest()) != key(problem)
    assert key(problem, source="pas") != key(problem)
    assert key(problem, source=None) != key(problem)
    assert key(problem, status=400) != key(problem)


def test_fhir_and_hl7_problems_keep_their_codes_and_locations() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "code-invalid", "diagnostics": "RXNOLD", "expression": ["a"]}
        ],
    }
    moved = {**outcome, "issue": [{**outcome["issue"][0], "expression": ["b"]}]}
    assert key(outcome) != key(moved)
    hl7 = {"type": "hl7-error", "errors": [{"location": "PV1-19", "code": "101", "message": "missing"}]}
    reworded = {**hl7, "errors": [{"location": "PV1-19", "code": "101", "message": "PV1-19 is empty"}]}
    assert key(hl7) == key(reworded)
    assert key(hl7) != key({**hl7, "errors": [{"location": "PV1-3", "code": "101", "message": "missing"}]})
