"""Rotating the key that seals raw messages, as an operator does it: `icc secrets rotate-raw-key`,
restart ingest, `icc secrets reseal`, `icc secrets retire-raw-key`, against a running ingest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.sealed import Sealer, key_id, sealed_by
from shared.secrets_store import load
from tests.e2e.ingest_support import (
    NHS_NUMBER,
    Ingest,
    admin_headers,
    ingest_only_async,
    new_id,
    now_iso,
    post,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def arrival(site: str = "RXN01") -> dict[str, Any]:
    return {
        "milestone": "arrival",
        "site_id": site,
        "attendance_id": new_id("ATT"),
        "occurred_at": now_iso(),
        "mode": "walk-in",
        "patient": {"nhs_number": NHS_NUMBER, "mrn": "MRN0042"},
    }


async def icc(ingest: Ingest, *args: str) -> subprocess.CompletedProcess[str]:
    """The `icc` command as an operator runs it, against this ingest's database and secrets file."""
    env = {
        **os.environ,
        "DATABASE_URL": ingest.database_url,
        "ICC_SECRETS_FILE": str(ingest.stack.settings.resolved_secrets_file),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "icc.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _restart_ingest(ingest: Ingest) -> None:
    def restart() -> None:
        ingest.stack.stop_service("ingest")
        ingest.stack.start_service("ingest")
        ingest.stack.wait_ready("ingest")

    await asyncio.to_thread(restart)


async def _last_raw_key(conn: asyncpg.Connection) -> str | None:
    return sealed_by(bytes(await conn.fetchval("SELECT body FROM raw_message ORDER BY id DESC LIMIT 1")))


async def test_rotate_restart_reseal_and_retire_with_replays_working_throughout(
    pg_admin_url: str, tmp_path: Path
) -> None:
    async with (
        ingest_only_async(pg_admin_url, tmp_path) as ingest,
        httpx.AsyncClient(timeout=30) as client,
    ):
        conn = await asyncpg.connect(ingest.database_url)
        try:
            await _rotation(ingest, client, conn)
        finally:
            await conn.close()


async def _rotation(ingest: Ingest, client: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
    url = f"{ingest.url}/v1/ed-events"
    admin = admin_headers(ingest)
    first = key_id(ingest.secrets.raw_store_key)

    # sealed by the running ingest with the first key: one taken, one refused (unknown site)
    assert (await post(client, url, ingest.secrets, arrival())).status_code == 202
    refused = await post(client, url, ingest.secrets, arrival(site="NOWHERE"))
    assert refused.status_code == 422, refused.text
    quarantined = await conn.fetchval("SELECT id FROM quarantine ORDER BY id DESC LIMIT 1")
    assert (
        sealed_by(bytes(await conn.fetchval("SELECT body FROM quarantine WHERE id = $1", quarantined)))
        == first
    )

    rotated = await icc(ingest, "secrets", "rotate-raw-key")
    assert rotated.returncode == 0, rotated.stderr
    second = key_id(load(ingest.stack.settings.resolved_secrets_file).raw_store_key)
    assert second != first
    assert f"current raw store key: {second} (new)" in rotated.stdout
    assert f"kept to open only:     {first}" in rotated.stdout

    # a running ingest seals with the key it started with until it restarts
    assert (await post(client, url, ingest.secrets, arrival())).status_code == 202
    assert await _last_raw_key(conn) == first
    await _restart_ingest(ingest)
    assert (await post(client, url, ingest.secrets, arrival())).status_code == 202
    assert await _last_raw_key(conn) == second

    # the restarted ingest still opens what the first key sealed: the replay runs (and is refused
    # again for its unknown site), rather than being refused as a body it cannot open
    replay = await client.post(f"{ingest.url}/v1/quarantine/{quarantined}/replay", headers=admin)
    assert replay.status_code == 422, replay.text
    assert replay.json()["type"].endswith("/replay-failed")

    listed = await icc(ingest, "secrets", "raw-keys")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[-2:] for line in listed.stdout.splitlines()[1:]}
    assert rows == {second: ["1", "0"], first: ["2", "1"]}  # raw_message, quarantine

    retire = await icc(ingest, "secrets", "retire-raw-key", first)
    assert retire.returncode == 1
    assert f"3 stored rows are still sealed with {first} (raw_message 2, quarantine 1)" in retire.stderr
    assert len(load(ingest.stack.settings.resolved_secrets_file).raw_store_previous_keys) == 1
    current_refused = await icc(ingest, "secrets", "retire-raw-key", second)
    assert current_refused.returncode == 1 and "current raw store key" in current_refused.stderr

    resealed = await icc(ingest, "secrets", "reseal", "--batch", "1")
    assert resealed.returncode == 0, resealed.stderr
    assert f"raw_message: 2 resealed under key {second} (0 of them stored before sealing) in 2 batches" in (
        resealed.stdout
    )
    assert f"quarantine: 1 resealed under key {second}" in resealed.stdout

    retired = await icc(ingest, "secrets", "retire-raw-key", first)
    assert retired.returncode == 0, retired.stderr
    after = load(ingest.stack.settings.resolved_secrets_file)
    assert key_id(after.raw_store_key) == second and after.raw_store_previous_keys == []

    # every stored body opens with the one key left
    only = Sealer(after.raw_store_key)
    for table in ("raw_message", "quarantine"):
        for row in await conn.fetch(f"SELECT body FROM {table}"):
            only.open(bytes(row["body"]))
    replay = await client.post(f"{ingest.url}/v1/quarantine/{quarantined}/replay", headers=admin)
    assert replay.status_code == 422 and replay.json()["type"].endswith("/replay-failed")
