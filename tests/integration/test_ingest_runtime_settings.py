"""An ingest app judges event times by the settings of the `Runtime` it was built with, not by the
process's: two runtimes in one process (a test, a tool) each apply their own. So does an MLLP
listener given its runtime's settings."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from icc.embedded import Broker, free_port
from services.ingest.group_commit import GroupCommitWriter
from services.ingest.hl7_intake import Hl7Bookkeeping, Hl7Intake
from services.ingest.location_source import LocationMapSource
from services.ingest.mllp import MllpServer, parse_allow_list
from shared.db import create_pool
from shared.organisation import Organisation
from shared.sealed import Sealer, new_key
from shared.secrets_store import Secrets
from shared.settings import get_settings
from tests.conftest import SAMPLE_LOCATION_MAP, make_settings
from tests.e2e.ingest_support import post
from tests.e2e.test_ingest_bounds import INTERFACES, Interface
from tests.e2e.test_ingest_poison import over_mllp_at
from tests.integration.ingest_in_process import ingest_app

pytestmark = pytest.mark.integration

SKEW = timedelta(hours=3)  # far beyond the default: what is allowed must come from this runtime


async def send(
    client: httpx.AsyncClient, secrets: Secrets, interface: Interface, at: datetime
) -> httpx.Response:
    return await post(
        client,
        interface.endpoint,
        secrets,
        interface.body(at),
        source=interface.source,
        content_type=interface.content_type,
    )


async def test_event_times_are_bounded_by_the_runtimes_own_max_future_skew(
    tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path, test_secrets: Secrets
) -> None:
    assert timedelta(seconds=get_settings().max_future_skew_seconds) < timedelta(hours=2)
    settings = make_settings(
        tmp_path,
        database_url,
        broker.bootstrap,
        secrets_file,
        ICC_MAX_FUTURE_SKEW_SECONDS=int(SKEW.total_seconds()),
    )
    async with ingest_app(settings) as (client, _):
        for name, interface in INTERFACES.items():
            now = datetime.now(UTC)
            # two hours ahead: beyond the process's setting, within this runtime's
            taken = await send(client, test_secrets, interface, now + timedelta(hours=2))
            assert taken.status_code in (200, 202), (name, taken.text)
            # and this runtime's bound still holds, naming the field
            refused = await send(client, test_secrets, interface, now + SKEW + timedelta(hours=1))
            assert refused.status_code == 422 and interface.names_the_field(refused), (name, refused.text)


async def test_an_mllp_listener_bounds_event_times_by_the_settings_it_is_given(
    tmp_path: Path, database_url: str, secrets_file: Path, org: Organisation
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        "unused:9",
        secrets_file,
        ICC_MAX_FUTURE_SKEW_SECONDS=int(SKEW.total_seconds()),
    )
    pool = await create_pool(database_url)
    writer = GroupCommitWriter(pool, sealer=Sealer(new_key()), steps=[Hl7Bookkeeping()])
    running = asyncio.create_task(writer.run())
    intake = Hl7Intake(writer, pool, LocationMapSource(org, SAMPLE_LOCATION_MAP), secrets.token_hex(32))
    server = MllpServer(
        intake,
        host="127.0.0.1",
        port=free_port(),
        rules=parse_allow_list("127.0.0.1=pas"),
        max_frame=65536,
        settings=settings,
    )
    await server.start()
    try:
        now = datetime.now(UTC)
        frames = [INTERFACES["hl7v2"].body(now + ahead).decode() for ahead in (timedelta(hours=2), SKEW * 2)]
        acks = await asyncio.to_thread(over_mllp_at, (server.host, server.port), *frames)
        assert [a["MSA"][0][1] for a in acks] == ["AA", "AE"]
    finally:
        await server.stop()
        running.cancel()
        await pool.close()
