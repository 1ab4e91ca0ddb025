"""Long-running loops that must outlive broker and database outages (and their own bugs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

EXPECTED = (KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def supervise(
    name: str,
    run_once: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    first_backoff: float = 0.2,
    max_backoff: float = 10.0,
) -> None:
    """Run `run_once` again and again until `stop` is set, backing off after each failure.

    An outage is expected and logged as a warning; anything else is logged with its traceback and
    retried too, because a supervisor that dies quietly leaves the service up but doing nothing.
    A clean return (e.g. "start over on a new broker") is followed straight away by the next run.
    """
    backoff = first_backoff
    while not stop.is_set():
        try:
            await run_once()
            backoff = first_backoff
            continue
        except EXPECTED as exc:
            log.warning("%s: %s; retrying in %.1fs", name, exc, backoff)
        except Exception:
            log.exception("%s failed; retrying in %.1fs", name, backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, max_backoff)
