"""docs/metrics.md defines every published figure: each field of the ward and site models has a row of
its own in its section's tables (and no row names anything else), and the history section names what
the endpoint accepts beyond them, so the document cannot fall behind the code again."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from pydantic import BaseModel

from services.command_centre.api import HISTORY_METRICS
from services.command_centre.metrics import SiteMetrics, WardMetrics

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _section(heading: str) -> str:
    """The `## heading` section of the document, up to the next second-level heading."""
    found = re.search(rf"^## {re.escape(heading)}\b.*?(?=^## |\Z)", DOC.read_text("utf-8"), re.M | re.S)
    assert found is not None, f"docs/metrics.md has no '## {heading}' section"
    return found.group(0)


def _defined(section: str) -> set[str]:
    """The names in backticks in the first cell of the section's table rows: the metrics it defines.

    A name mentioned only in prose or in another metric's definition does not count, so deleting a
    metric's row is noticed even when a ratio still names it as its numerator.
    """
    rows = (line.split("|")[1] for line in section.splitlines() if line.startswith("|"))
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def _not_named(names: Iterable[str], section: str) -> list[str]:
    return sorted(name for name in names if f"`{name}`" not in section)


@pytest.mark.parametrize(("heading", "model"), [("Ward", WardMetrics), ("Site", SiteMetrics)])
def test_each_field_has_a_row_and_each_row_a_field(heading: str, model: type[BaseModel]) -> None:
    defined, fields = _defined(_section(heading)), set(model.model_fields)
    assert sorted(fields - defined) == [], f"fields with no row under '## {heading}'"
    assert sorted(defined - fields) == [], f"rows under '## {heading}' naming no field"


def test_the_history_section_names_the_series_beyond_the_site_fields_and_those_left_out() -> None:
    history, fields = _section("History"), set(SiteMetrics.model_fields)
    assert _not_named(HISTORY_METRICS - fields, history) == []  # the OPEL level series
    assert _not_named(fields - HISTORY_METRICS, history) == []  # fields that are not history
