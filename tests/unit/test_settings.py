"""Settings read from the environment, and refused when out of range."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.live_state import QUEUE_LIMIT
from services.ingest.mllp import IDLE_SECONDS
from shared.kafka import FETCH_WAIT_MS
from shared.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "attribute", "default", "value"),
    [
        # the consumers' own default: the embedded broker's short wait
        ("ICC_KAFKA_FETCH_WAIT_MS", "kafka_fetch_wait_ms", FETCH_WAIT_MS, 500),
        # a subscriber's own queue limit
        ("ICC_STREAM_QUEUE_FRAMES", "stream_queue_frames", QUEUE_LIMIT, 64),
        # the MLLP listener's own default
        ("ICC_MLLP_IDLE_SECONDS", "mllp_idle_seconds", IDLE_SECONDS, 5),
        # hospital systems' clocks drift by minutes, not hours
        ("ICC_MAX_FUTURE_SKEW_SECONDS", "max_future_skew_seconds", 300, 60),
        # a wall renews its token for a week before it must be given a new one
        ("ICC_MAX_SESSION_HOURS", "max_session_hours", 168, 12),
    ],
)
def test_a_setting_defaults_to_what_its_code_uses_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, attribute: str, default: int, value: int
) -> None:
    monkeypatch.delenv(name, raising=False)
    assert getattr(Settings(), attribute) == default
    monkeypatch.setenv(name, str(value))
    assert getattr(Settings(), attribute) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ICC_KAFKA_FETCH_WAIT_MS", "0"),
        ("ICC_KAFKA_FETCH_WAIT_MS", "-5"),
        ("ICC_KAFKA_FETCH_WAIT_MS", "60000"),
        ("ICC_KAFKA_FETCH_WAIT_MS", "soon"),
        ("ICC_STREAM_QUEUE_FRAMES", "1"),
        ("ICC_MLLP_IDLE_SECONDS", "-1"),
        ("ICC_MAX_FUTURE_SKEW_SECONDS", "-1"),
        ("ICC_MAX_SESSION_HOURS", "0"),
    ],
)
def test_a_setting_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()
