"""Ingest as an app in this process, on a `Runtime` of the test's own: the real group commit, relay,
PostgreSQL and broker, requests through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from services.ingest.app import create_app
from shared.runtime import Runtime, load_runtime
from shared.settings import Settings


@asynccontextmanager
async def ingest_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """A started ingest app (its lifespan run) and a client that reaches it from 127.0.0.1."""
    runtime = load_runtime(settings)
    app = create_app(runtime)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=30
        ) as client,
    ):
        yield client, runtime
