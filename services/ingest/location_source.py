"""The location map that ingest maps with, re-read when its file changes.

A fix to the mapping (a new alias for an old ward code, say) must not need a restart before a
quarantined message is replayed, so the file's modification time is checked at most once a second,
and always before a replay. A file that no longer loads keeps the last good map and says why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import asyncpg

from services.ingest.hl7_adt import UnmappedLocation
from shared.location_map import LocationMapError, LocationMapper, load_location_map
from shared.organisation import Organisation

log = logging.getLogger(__name__)


class LocationMapSource:
    def __init__(
        self,
        org: Organisation,
        path: Path | None,
        *,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.org = org
        self.path = path
        self.check_every = check_every
        self.clock = clock
        self.error: str | None = None
        self._stamp = self._file_stamp()
        self._mapper = load_location_map(org, path)
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self, *, force: bool = False) -> LocationMapper:
        now = self.clock()
        if force or now - self._checked >= self.check_every:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._mapper = load_location_map(self.org, self.path)
                    self.error = None
                    log.info("location map reloaded from %s", self.path)
                except LocationMapError as exc:
                    self.error = str(exc)
                    log.error("location map not reloaded, keeping the previous one: %s", exc)
        return self._mapper


async def list_unmapped(conn: asyncpg.Connection, places: Iterable[tuple[str, UnmappedLocation]]) -> None:
    """Count the location codes the mapping lacks, per source, in the caller's transaction: what
    `GET /v1/locations/unmapped` lists, whichever interface (HL7, FHIR) the codes came in by.

    One row per (source, site, kind, code), counting every occurrence and keeping the latest example;
    rows are written in one order by every writer, so concurrent commits cannot deadlock on them.
    """
    counts: Counter[tuple[str, str, str, str]] = Counter()
    examples: dict[tuple[str, str, str, str], str] = {}
    for source, place in places:
        key = (source, place.site_id or "", place.kind, place.code)
        counts[key] += 1
        examples[key] = place.example
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        """
        INSERT INTO unmapped_location (source, site_id, kind, code, example, count)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
        ON CONFLICT (source, site_id, kind, code) DO UPDATE
           SET count = unmapped_location.count + excluded.count,
               example = excluded.example, last_seen = now()
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [examples[k] for k in keys],
        [counts[k] for k in keys],
    )
