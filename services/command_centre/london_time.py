"""Operational days are Europe/London days: "since midnight" means since local midnight, BST or GMT."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")


def local_date(at: datetime) -> date:
    return at.astimezone(LONDON).date()


def midnight_before(at: datetime) -> datetime:
    """The most recent Europe/London midnight at or before `at` (an aware datetime)."""
    day = local_date(at)
    return datetime(day.year, day.month, day.day, tzinfo=LONDON)


def same_time_last_week(at: datetime) -> datetime:
    """The same local wall-clock time seven days earlier (not 168 h: a week can hold a clock change)."""
    local = at.astimezone(LONDON)
    earlier = local.date() - timedelta(days=7)
    return datetime(
        earlier.year,
        earlier.month,
        earlier.day,
        local.hour,
        local.minute,
        local.second,
        local.microsecond,
        tzinfo=LONDON,
    )
