"""Site and system metrics and OPEL over a period as CSV, for analysts. Pure.

One row per scope and moment a value changed (the `metric_point` history, written on change and at
most once a minute); each row carries every metric's value as of that moment, carried forward.
`opel_computed_level` is the computed level kept in the history at that moment; for history
written before levels were kept, the level the current profile gives those metrics.
`opel_declared_level` is the human-declared level active at that moment.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

Point = tuple[str, str, datetime, float | None]  # scope, metric, at, value
Scorer = Callable[[Mapping[str, float | None]], int | None]
# the history series that hold levels (`projection.OPEL_SERIES`): columns of their own, not metrics
COMPUTED_LEVEL, EFFECTIVE_LEVEL = "opel_computed_level", "opel_level"


@dataclass(frozen=True)
class Declaration:
    scope: str
    level: int
    declared_at: datetime
    ends_at: datetime | None  # the earlier of expiry and withdrawal


def declared_at(declarations: Iterable[Declaration], scope: str, at: datetime) -> int | None:
    """The level declared for `scope` and active at `at` (the latest declaration wins)."""
    active = [
        d
        for d in declarations
        if d.scope == scope and d.declared_at <= at and (d.ends_at is None or at < d.ends_at)
    ]
    return max(active, key=lambda d: d.declared_at).level if active else None


def wide_rows(points: Iterable[Point]) -> list[tuple[str, datetime, dict[str, float | None]]]:
    """(scope, at, every metric known then) per moment, carrying the last value forward per scope."""
    latest: dict[str, dict[str, float | None]] = {}
    rows: dict[tuple[str, datetime], dict[str, float | None]] = {}
    for scope, metric, at, value in sorted(points, key=lambda p: (p[0], p[2], p[1])):
        current = latest.setdefault(scope, {})
        current[metric] = value
        rows[(scope, at)] = dict(current)
    return [(scope, at, values) for (scope, at), values in sorted(rows.items())]


def _cell(value: object) -> object:
    return "" if value is None else value


def to_csv(
    points: Iterable[Point],
    metrics: Sequence[str],
    *,
    score: Scorer,
    declarations: Iterable[Declaration] = (),
) -> str:
    declared = list(declarations)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    metrics = [m for m in metrics if m not in (COMPUTED_LEVEL, EFFECTIVE_LEVEL)]
    writer.writerow(["scope", "at", "opel_computed_level", "opel_declared_level", *metrics])
    for scope, at, values in wide_rows(points):
        stored = values.get(COMPUTED_LEVEL)
        if stored is not None:
            level: int | None = int(stored)
        else:
            level = score(values) if scope.startswith("site:") else None
        writer.writerow(
            [
                scope,
                at.isoformat(),
                _cell(level),
                _cell(declared_at(declared, scope, at)),
                *(_cell(values.get(m)) for m in metrics),
            ]
        )
    return out.getvalue()
