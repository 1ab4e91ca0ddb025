"""The one rule on a source's event times that every interface applies before they become events.

The command centre orders events by their time and the newest wins: one bed closure dated 2205 would
hold the bed closed whatever really happened after it, until 2205. A time before 1990 is a default
or a typing slip, not a hospital event. So an event time later than ICC's clock when the message was
received plus `ICC_MAX_FUTURE_SKEW_SECONDS` (clocks drift, but not by hours), or before 1990-01-01,
is refused; each interface names the field it came from in its own answer (HL7 ERR, FHIR
OperationOutcome, problem+json) and the message is quarantined like any other refusal.

The setting is the one of the `Runtime` that received the message: the webhooks process messages
inside `received_by(runtime.settings)` (`intake.run_live` and the HL7 route do; so does an MLLP
listener given its runtime's settings), and `EventTimeBounds.at_receipt` reads it from there, so
two runtimes in one process (a test, a tool) each apply their own. Outside any, the process's
settings apply. The bounds are made where the message is received: work handed to another task
(the group-commit writer's) does not see it.

Pure, apart from `EventTimeBounds.at_receipt` reading the setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.events import utcnow
from shared.problems import Problem
from shared.settings import Settings, get_settings

EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)

# The receiving runtime's ICC_MAX_FUTURE_SKEW_SECONDS; a context variable, so it follows the request's
# (or MLLP connection's) task and the tasks it starts, and nothing else.
_max_future_skew: ContextVar[timedelta | None] = ContextVar("max_future_skew", default=None)


@contextmanager
def received_by(settings: Settings) -> Iterator[None]:
    """Judge the event times of what is received inside this block by `settings` (its runtime's)."""
    token = _max_future_skew.set(timedelta(seconds=settings.max_future_skew_seconds))
    try:
        yield
    finally:
        _max_future_skew.reset(token)


@dataclass(frozen=True)
class EventTimeBounds:
    """The event times a message received at `received_at` may carry."""

    received_at: datetime
    max_future_skew: timedelta

    @classmethod
    def at_receipt(cls, received_at: datetime | None = None) -> EventTimeBounds:
        """The bounds of a message received at `received_at`; none given, now: the message is being
        mapped by the request (or MLLP frame, or replay) that received it. The skew allowed is the
        receiving runtime's (`received_by`), else the process's setting."""
        skew = _max_future_skew.get()
        if skew is None:
            skew = timedelta(seconds=get_settings().max_future_skew_seconds)
        return cls(received_at if received_at is not None else utcnow(), skew)

    @property
    def latest(self) -> datetime:
        return self.received_at + self.max_future_skew

    def refusal(self, when: datetime) -> str | None:
        """Why `when` cannot be an event time; None when it can."""
        if when < EARLIEST:
            return f"{when.isoformat()} is before {EARLIEST.date()}: too early to be a hospital event"
        if when > self.latest:
            return (
                f"{when.isoformat()} is in the future: later than ICC's clock when the message was received "
                f"({self.received_at.isoformat(timespec='seconds')}) plus "
                f"{self.max_future_skew.total_seconds():g} s of clock drift"
            )
        return None

    def check_json_field(self, when: datetime, field: str) -> None:
        """For the JSON interfaces: a 422 problem naming the field (and, in NDJSON, its line)."""
        reason = self.refusal(when)
        if reason is not None:
            raise Problem(
                422,
                "event-time-out-of-range",
                "Event time out of range",
                f"{field}: {reason}",
                errors=[{"field": field, "message": reason}],
            )
