"""Fixtures of the ingest tests: each module starts its own ingest (`ingest`, from
`ingest_support.ingest_only`, with the settings it needs); these work on whichever it started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.e2e.ingest_support import Ingest


@pytest.fixture
async def conn(ingest: Ingest) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(ingest.database_url)
    yield c
    await c.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c
