"""Two command-centre replicas in one group share the sites; a rebalance loses and double-counts nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from datetime import timedelta

import asyncpg
import httpx
import pytest

from icc.embedded import free_port
from icc.stack import Stack
from shared.auth import Role
from shared.organisation import Organisation
from shared.secrets_store import Secrets
from tests.conftest import eventually
from tests.helpers import post_signed, shuffled_bed_history, token

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

        async def post_all(chunk: list[dict]) -> None:
            for e in chunk:
                assert (await post_signed(client, url, test_secrets, e)).status_code == 202

        await asyncio.gather(*(post_all(events[:200][i::6]) for i in range(6)))
        # the replica owning the first site dies mid-stream: its partitions move to the survivor
        stack.stop_service("command-centre", signal.SIGKILL)
        await asyncio.gather(*(post_all(events[200:][i::6]) for i in range(6)))

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
    # nothing lost, nothing counted twice: every event is in the log exactly once
    assert await db.fetchval("SELECT count(*) FROM site_event") == len(events)
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM site_event") == len(events)
