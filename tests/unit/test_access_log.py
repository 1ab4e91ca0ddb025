"""Which of uvicorn's access records ICC's default access log keeps (icc.access_log)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from icc.access_log import ACCESS_LOGGER, ErrorsOnly, uvicorn_cli_options, uvicorn_log_config

pytestmark = pytest.mark.unit


def access_record(status: object) -> logging.LogRecord:
    """A record as uvicorn's HTTP protocols make it for an answered request."""
    return logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "POST", "/v1/ed-events", "1.1", status),
        None,
    )


@pytest.mark.parametrize(
    ("status", "kept"),
    [(200, False), (202, False), (304, False), (400, True), (401, True), (429, True), (503, True)],
)
def test_only_error_answers_pass(status: int, kept: bool) -> None:
    assert ErrorsOnly().filter(access_record(status)) is kept


def test_a_record_of_another_shape_passes() -> None:
    other = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "something else", None, None)
    assert ErrorsOnly().filter(other)
    assert ErrorsOnly().filter(access_record("202"))


def test_only_errors_mode_filters_the_access_logger() -> None:
    assert uvicorn_log_config("errors")["loggers"][ACCESS_LOGGER]["filters"] == ["errors_only"]
    for mode in ("all", "off"):
        assert "filters" not in uvicorn_log_config(mode)["loggers"][ACCESS_LOGGER]


def test_the_command_line_options_carry_the_same_configuration(tmp_path: Path) -> None:
    options = uvicorn_cli_options("errors", tmp_path)
    assert options[0] == "--log-config" and "--no-access-log" not in options
    assert json.loads(Path(options[1]).read_text()) == uvicorn_log_config("errors")
    assert uvicorn_cli_options("off", tmp_path)[-1] == "--no-access-log"
