"""Composition root of the feeds service: pull endpoints and the push worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.feeds.api import router
from services.feeds.push import PushPolicy, PushWorker
from shared import problems
from shared.opel import load_profile
from shared.runtime import Runtime, load_runtime, settle_heap


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or load_runtime()
    settings = runtime.settings
    profile = load_profile(settings.opel_profile)
    policy = PushPolicy(
        poll_seconds=settings.feeds_poll_seconds,
        max_attempts=settings.feeds_max_attempts,
        retry_base_seconds=settings.feeds_retry_base_seconds,
        retry_max_seconds=settings.feeds_retry_max_seconds,
        timeout_seconds=settings.feeds_delivery_timeout_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        worker = PushWorker(runtime.db, runtime.org, policy)
        runtime.extra.update(profile=profile, push=worker)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        settle_heap()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await runtime.stop()

    app = FastAPI(title="ICC feeds", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(router)
    return app
