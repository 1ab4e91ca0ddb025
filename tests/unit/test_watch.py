"""The lines `icc watch` prints for stream messages (icc.watch.describe), from payloads shaped as
the gateway sends them (docs/stream.md)."""

from __future__ import annotations

from typing import Any

import pytest

from icc.watch import describe

pytestmark = pytest.mark.unit


def escalation(ident: str, status: str, version: int = 1) -> dict[str, Any]:
    """An escalation as `escalation.changed` carries it: its key is `id`."""
    return {
        "id": ident,
        "tier": "ward",
        "scope": "ward:RXN01-AMU",
        "status": status,
        "version": version,
        "severity": "high",
        "reason": "no side rooms left",
    }


def test_an_escalation_delta_names_the_escalation_by_its_id() -> None:
    line = describe(
        {
            "type": "delta",
            "scope": "site:RXN01",
            "seq": 15,
            "cursor": "c1.x",
            "escalation": escalation("6f1c2d", "acknowledged", version=3),
        }
    )
    assert line == (
        "escalation site:RXN01 seq=15 6f1c2d v3 tier=ward status=acknowledged reason='no side rooms left'"
    )


def test_a_resume_lists_the_escalations_that_changed_while_away_with_their_status() -> None:
    line = describe(
        {
            "type": "resume",
            "scope": "site:RXN01",
            "seq": 40,
            "cursor": "c1.x",
            "wards": [{"ward_id": "RXN01-AMU", "version": 7}],
            "summaries": [{"scope": "site:RXN01", "version": 9}],
            "escalations": [escalation("6f1c2d", "resolved", 4), escalation("9a0b1c", "open")],
        }
    )
    assert line == (
        "resume   site:RXN01 seq=40 missed wards=['RXN01-AMU'] summaries=1 "
        "escalations=['6f1c2d:resolved', '9a0b1c:open']"
    )


def test_a_resume_with_nothing_missed_says_so() -> None:
    line = describe(
        {"type": "resume", "scope": "site:RXN01", "seq": 3, "wards": [], "summaries": [], "escalations": []}
    )
    assert line == "resume   site:RXN01 seq=3 missed wards=[] summaries=0 escalations=[]"
