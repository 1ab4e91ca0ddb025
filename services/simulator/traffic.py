"""Synthetic bed traffic for a trust, posted through the real signed webhooks.

Beds follow a plausible cycle: an occupied bed is vacated into housekeeping, cleaned into
unoccupied, then filled; now and then one is closed (e.g. for infection control) and reopened.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from shared.auth import SOURCE_HEADER, sign_webhook
from shared.events import BedStatus
from shared.organisation import Organisation

log = logging.getLogger(__name__)

NEXT_STATUS: dict[BedStatus, list[tuple[BedStatus, float]]] = {
    BedStatus.occupied: [(BedStatus.housekeeping, 1.0)],
    BedStatus.housekeeping: [(BedStatus.unoccupied, 0.95), (BedStatus.isolated, 0.05)],
    BedStatus.isolated: [(BedStatus.unoccupied, 1.0)],
    BedStatus.contaminated: [(BedStatus.housekeeping, 1.0)],
    BedStatus.unoccupied: [(BedStatus.occupied, 0.97), (BedStatus.closed, 0.03)],
    BedStatus.closed: [(BedStatus.unoccupied, 1.0)],
}


@dataclass
class Simulator:
    org: Organisation
    ingest_url: str
    source: str
    secret: str
    rate: float = 5.0
    occupancy: float = 0.93
    seed: int | None = None

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.status: dict[str, BedStatus] = {}
        self.sent = 0
        self.failed = 0

    def _body(self, bed_id: str, status: BedStatus) -> bytes:
        bed = self.org.beds[bed_id]
        return orjson.dumps(
            {
                "site_id": bed.site_id,
                "ward_id": bed.ward_id,
                "bed_id": bed.id,
                "status": status.value,
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        )

    async def post(self, client: httpx.AsyncClient, bed_id: str, status: BedStatus) -> bool:
        body = self._body(bed_id, status)
        headers = {
            "content-type": "application/json",
            SOURCE_HEADER: self.source,
            **sign_webhook(self.secret, body),
        }
        try:
            response = await client.post(f"{self.ingest_url}/v1/bed-events", content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("simulator: %s", exc)
            return False
        if response.status_code != 202:
            self.failed += 1
            log.warning("simulator: %s %s", response.status_code, response.text[:200])
            return False
        self.status[bed_id] = status
        self.sent += 1
        return True

    def next_change(self) -> tuple[str, BedStatus]:
        bed_id = self.random.choice(list(self.status) or list(self.org.beds))
        choices = NEXT_STATUS[self.status.get(bed_id, BedStatus.unoccupied)]
        status = self.random.choices([c[0] for c in choices], weights=[c[1] for c in choices])[0]
        return bed_id, status

    async def seed_beds(self, client: httpx.AsyncClient) -> None:
        """Report every bed once, at the target occupancy."""
        beds = list(self.org.beds)
        semaphore = asyncio.Semaphore(16)

        async def one(bed_id: str) -> None:
            status = BedStatus.occupied if self.random.random() < self.occupancy else BedStatus.unoccupied
            async with semaphore:
                await self.post(client, bed_id, status)

        await asyncio.gather(*(one(b) for b in beds))

    async def run(self, stop: asyncio.Event, *, changes: int | None = None) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await self.seed_beds(client)
            done = 0
            while not stop.is_set() and (changes is None or done < changes):
                bed_id, status = self.next_change()
                await self.post(client, bed_id, status)
                done += 1
                try:
                    await asyncio.wait_for(stop.wait(), self.random.expovariate(self.rate))
                except TimeoutError:
                    pass
