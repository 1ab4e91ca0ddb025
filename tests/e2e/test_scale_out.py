"""Two command-centre replicas in one group share the sites; a rebalance loses and double-counts nothing.

Each site's bed and ED events reach the one replica that owns the site (3 partitions shared by 2
replicas is a count aiokafka's default assignor splits a site over), so only one replica ever
publishes a site's state.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from icc.embedded import free_port
from icc.stack import Stack
from shared import topics
from shared.auth import Role
from shared.organisation import Organisation
from shared.outbox import append
from shared.secrets_store import Secrets
from tests.conftest import eventually
from tests.helpers import post_signed, shuffled_bed_history, token
from tests.integration.support import bed_envelope, outbox_event

pytestmark = pytest.mark.e2e


def start_replica(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    """A second command-centre process: same group, database and broker, its own port."""
    log = (stack.data_dir / "logs" / "command-centre-2.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "icc.cli", "command-centre", "--port", str(port)],
        env=stack.child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    stack.processes["command-centre-2"] = process
    return process


async def consumer_view(client: httpx.AsyncClient, url: str, admin: str) -> dict | None:
    try:
        response = await client.get(f"{url}/v1/consumer", headers={"Authorization": f"Bearer {admin}"})
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def ed_arrival(site_id: str) -> dict[str, Any]:
    return {
        "milestone": "arrival",
        "site_id": site_id,
        "attendance_id": f"ATT{uuid.uuid4().hex[:10].upper()}",
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        "mode": "walk_in",
    }


async def in_department(db: asyncpg.Connection) -> dict[str, int]:
    """Each site's published `ed_in_department`."""
    rows = await db.fetch(
        "SELECT substr(scope, 6) AS site, (summary->'metrics'->>'ed_in_department')::int AS n "
        "FROM scope_state WHERE scope LIKE 'site:%'"
    )
    return {r["site"]: r["n"] for r in rows}


async def test_two_replicas_share_sites_and_survive_a_rebalance(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection, org: Organisation
) -> None:
    admin = token(test_secrets, Role.admin, f"system:{org.system.id}")
    first_url = stack.url_of("command-centre")
    second_port = free_port()
    second_url = f"http://{stack.settings.host}:{second_port}"
    start_replica(stack, second_port)

    beds = [b.id for site in org.sites for b in site.wards[0].bed_list]
    events, latest = shuffled_bed_history(random.Random(11), beds, 400, timedelta(hours=2))
    arrivals = [ed_arrival(site.id) for site in org.sites for _ in range(10)]
    random.Random(12).shuffle(arrivals)

    async with httpx.AsyncClient(timeout=30) as client:

        async def both_own_a_site() -> tuple[dict, dict] | None:
            views = (
                await consumer_view(client, first_url, admin),
                await consumer_view(client, second_url, admin),
            )
            if all(v and v["owned_sites"] for v in views):
                return views  # type: ignore[return-value]
            return None

        first, second = await eventually(both_own_a_site, timeout=90)
        # the sites are shared out: each replica owns some, none is owned twice
        assert set(first["owned_sites"]).isdisjoint(second["owned_sites"])
        assert set(first["owned_sites"]) | set(second["owned_sites"]) == {s.id for s in org.sites}

        url = f"{stack.url_of('ingest')}/v1/bed-events"
        ed_url = f"{stack.url_of('ingest')}/v1/ed-events"

        async def post_all(chunk: list[dict]) -> None:
            for e in chunk:
                assert (await post_signed(client, url, test_secrets, e)).status_code == 202

        async def post_ed(chunk: list[dict[str, Any]]) -> None:
            for e in chunk:
                assert (await post_signed(client, ed_url, test_secrets, e, source="ed")).status_code == 202

        half = len(arrivals) // 2
        await asyncio.gather(*(post_all(events[:200][i::6]) for i in range(6)), post_ed(arrivals[:half]))

        async def ed_counted_by_owners() -> bool:
            expected = {s.id: sum(a["site_id"] == s.id for a in arrivals[:half]) for s in org.sites}
            return await in_department(db) == expected

        await eventually(ed_counted_by_owners, timeout=60)
        for view in (
            await consumer_view(client, first_url, admin),
            await consumer_view(client, second_url, admin),
        ):
            assert view is not None and view["set_aside"] == {"unknown_site": 0, "not_owned": 0}, view
        # the replica owning the first site dies mid-stream: its partitions move to the survivor
        stack.stop_service("command-centre", signal.SIGKILL)
        await asyncio.gather(*(post_all(events[200:][i::6]) for i in range(6)), post_ed(arrivals[half:]))

        async def survivor_owns_everything() -> dict | None:
            view = await consumer_view(client, second_url, admin)
            return view if view and set(view["owned_sites"]) == {s.id for s in org.sites} else None

        await eventually(survivor_owns_everything, timeout=90)

    async def settled() -> bool:
        for bed_id, status in latest.items():
            current = await db.fetchval(
                "SELECT summary->'beds'->>$1 FROM ward_state WHERE ward_id = $2",
                bed_id,
                bed_id.rsplit("-", 2)[0],
            )
            if current != status:
                return False
        return True

    await eventually(settled, timeout=90)
    expected = {s.id: sum(a["site_id"] == s.id for a in arrivals) for s in org.sites}

    async def ed_counted() -> bool:
        return await in_department(db) == expected

    await eventually(ed_counted, timeout=60)
    # nothing lost, nothing counted twice: every event is in the log exactly once
    total = len(events) + len(arrivals)
    assert await db.fetchval("SELECT count(*) FROM site_event") == total
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM site_event") == total
    # one writer per site at a time: no ward or site version was published twice
    repeated = await db.fetch(
        """
        SELECT key, convert_from(value, 'UTF8')::jsonb #>> '{payload,version}' AS version FROM outbox
        WHERE topic = $1 AND split_part(key, '/', 1) = any($2::text[])
        GROUP BY 1, 2 HAVING count(*) > 1
        """,
        topics.STATE.name,
        [s.id for s in org.sites],
    )
    assert not repeated, [dict(r) for r in repeated]

    # an event for a site outside the organisation (a producer with another organisation model) is
    # set aside and counted, not applied
    async with db.transaction():
        await append(db, [outbox_event(bed_envelope("ZZZ99", 1))])
    async with httpx.AsyncClient(timeout=30) as client:

        async def set_aside_by_survivor() -> dict[str, Any] | None:
            view = await consumer_view(client, second_url, admin)
            return view if view and view["set_aside"]["unknown_site"] == 1 else None

        survivor = await eventually(set_aside_by_survivor, timeout=60)
    assert survivor["set_aside"]["not_owned"] == 0
    assert await db.fetchval("SELECT count(*) FROM site_event") == total
