"""Composition root of the WebSocket gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import FileResponse

from services.gateway.live_state import LiveState
from services.gateway.state_feed import StateFeed, seed_from_database
from services.gateway.stream import router as stream_router
from services.gateway.token_api import router as token_router
from shared import problems
from shared.problems import OrjsonResponse
from shared.runtime import (
    CurrentRuntime,
    Runtime,
    end_with_supervisor,
    load_runtime,
    readiness,
    settle_heap,
)

STATIC = Path(__file__).parent / "static"
HEARTBEAT_SECONDS = 10.0


async def _heartbeats(live: LiveState, stop: asyncio.Event, drop_after: float) -> None:
    """Heartbeats to quiet connections; a client still behind after `drop_after` s is closed (4408)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(HEARTBEAT_SECONDS, drop_after / 2))
        live.heartbeat()
        for subscriber in live.stragglers(loop.time(), drop_after):
            subscriber.too_slow.set()


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or load_runtime()
    if runtime.settings.gateway_workers > 1:
        # a uvicorn worker: end with the supervisor, even one killed outright (or before this worker
        # got this far), so that no orphan keeps serving, and holding the port, after it
        end_with_supervisor()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(pool_size=2)
        live = LiveState(runtime.org)
        await seed_from_database(runtime.db, live)
        feed = StateFeed(
            runtime.bootstrap,
            live,
            partitions=runtime.settings.topic_partitions,
            fetch_wait_ms=runtime.settings.kafka_fetch_wait_ms,
        )
        command_centre = httpx.AsyncClient(base_url=runtime.settings.command_centre_url, timeout=10.0)
        runtime.extra.update(live=live, feed=feed, command_centre=command_centre)
        stop = asyncio.Event()
        drop_after = runtime.settings.stream_drop_after_seconds
        tasks = [
            asyncio.create_task(feed.run(stop)),
            asyncio.create_task(_heartbeats(live, stop, drop_after)),
        ]
        settle_heap()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await command_centre.aclose()
            await runtime.stop()

    app = FastAPI(title="ICC gateway", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(stream_router)
    app.include_router(token_router)

    @app.get("/", include_in_schema=False)
    async def wall_display() -> FileResponse:
        return FileResponse(STATIC / "wall.html", media_type="text/html")

    @app.get("/tablet", include_in_schema=False)
    async def tablet_view() -> FileResponse:
        return FileResponse(STATIC / "tablet.html", media_type="text/html")

    @app.get("/session.js", include_in_schema=False)
    async def session_script() -> FileResponse:
        """The pages' shared script: the token they hold, and its renewal before it expires."""
        return FileResponse(STATIC / "session.js", media_type="text/javascript")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(runtime: CurrentRuntime) -> OrjsonResponse:
        response = await readiness(runtime)
        feed: StateFeed = runtime.extra["feed"]
        if not feed.running:
            return OrjsonResponse({"status": "not ready", "checks": {"state_feed": False}}, status_code=503)
        return response

    return app
