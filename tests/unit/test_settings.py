"""Settings read from the environment, and refused when out of range."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.live_state import QUEUE_LIMIT
from shared.kafka import FETCH_WAIT_MS
from shared.settings import Settings

pytestmark = pytest.mark.unit


def test_fetch_wait_defaults_to_the_embedded_brokers_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ICC_KAFKA_FETCH_WAIT_MS", raising=False)
    assert Settings().kafka_fetch_wait_ms == FETCH_WAIT_MS
    monkeypatch.setenv("ICC_KAFKA_FETCH_WAIT_MS", "500")
    assert Settings().kafka_fetch_wait_ms == 500


@pytest.mark.parametrize("value", ["0", "-5", "60000", "soon"])
def test_a_fetch_wait_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ICC_KAFKA_FETCH_WAIT_MS", value)
    with pytest.raises(ValidationError, match="ICC_KAFKA_FETCH_WAIT_MS"):
        Settings()


def test_the_stream_queue_defaults_to_a_subscribers_own_limit_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ICC_STREAM_QUEUE_FRAMES", raising=False)
    assert Settings().stream_queue_frames == QUEUE_LIMIT
    monkeypatch.setenv("ICC_STREAM_QUEUE_FRAMES", "64")
    assert Settings().stream_queue_frames == 64
    monkeypatch.setenv("ICC_STREAM_QUEUE_FRAMES", "1")
    with pytest.raises(ValidationError, match="ICC_STREAM_QUEUE_FRAMES"):
        Settings()
