"""Shared fixtures: a real embedded PostgreSQL for the session, a fresh database and a fresh
embedded broker per test, and the whole stack started as `icc up` starts it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from icc.embedded import Broker, free_port, start_postgres, stop_postgres
from icc.stack import Stack
from shared.db import migrate
from shared.organisation import Organisation, load_organisation
from shared.secrets_store import Secrets, load_or_create
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ORG = ROOT / "deploy" / "org" / "sample-icb.yaml"
SAMPLE_LOCATION_MAP = ROOT / "deploy" / "org" / "location-map.yaml"
T = TypeVar("T")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def org() -> Organisation:
    return load_organisation(SAMPLE_ORG)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    # Its own folder, not pytest's temporary tree: the server runs as another user and needs to
    # reach it, and pytest prunes old temporary trees while other sessions may still use them.
    data = Path(tempfile.mkdtemp(prefix="icc-test-pg-"))
    data.chmod(0o755)
    url = start_postgres(data)
    yield url
    stop_postgres(data)
    shutil.rmtree(data, ignore_errors=True)


def _create_database(admin_url: str) -> str:
    name = f"icc_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    url = with_database(admin_url, name)
    migrate(url)
    return url


@pytest.fixture
def database_url(pg_admin_url: str) -> str:
    """A freshly migrated database of its own for each test."""
    return _create_database(pg_admin_url)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh embedded broker (empty, memory storage) for each test."""
    b = Broker(free_port(), tmp_path / "broker.log").start()
    yield b
    b.stop()


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.json"
    load_or_create(path)  # generated per run, never committed
    return path


@pytest.fixture
def test_secrets(secrets_file: Path) -> Secrets:
    return Secrets.model_validate_json(secrets_file.read_bytes())


def make_settings(
    tmp_path: Path, database_url: str, bootstrap: str, secrets_file: Path, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "ICC_DATA_DIR": tmp_path / "data",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP": bootstrap,
        "ICC_ORG_FILE": SAMPLE_ORG,
        "ICC_LOCATION_MAP_FILE": SAMPLE_LOCATION_MAP,
        "ICC_SECRETS_FILE": secrets_file,
        "ICC_INGEST_PORT": free_port(),
        "ICC_COMMAND_CENTRE_PORT": free_port(),
        "ICC_GATEWAY_PORT": free_port(),
        "ICC_FEEDS_PORT": free_port(),
        "ICC_MLLP_PORT": free_port(),
        "ICC_TOPIC_PARTITIONS": 3,
        "ICC_STATE_TICK_SECONDS": 1.0,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Settings:
    return make_settings(tmp_path, database_url, broker.bootstrap, secrets_file)


@pytest.fixture
def stack(settings: Settings, broker: Broker) -> Iterator[Stack]:
    """The three services as separate processes on the test's own database and broker."""
    s = Stack(settings)
    s.start_infrastructure()
    s.start_services()
    yield s
    s.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll `check` until it returns something truthy (the thing under test is asynchronous by design)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
