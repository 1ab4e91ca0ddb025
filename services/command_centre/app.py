"""Composition root of the command-centre service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from services.command_centre.api import router
from services.command_centre.handlers import BedProjection
from shared import problems, topics
from shared.consumer import StoredOffsetConsumer
from shared.outbox import OutboxRelay
from shared.runtime import Runtime, load_runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or load_runtime()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        settings = runtime.settings
        consumer = StoredOffsetConsumer(
            bootstrap=runtime.bootstrap,
            pool=runtime.db,
            group_id=settings.consumer_group,
            topic_names=[topics.BEDS.name],
            handler=BedProjection(runtime.org),
            partitions=settings.topic_partitions,
        )
        relay = OutboxRelay(
            runtime.database_url,
            runtime.bootstrap,
            partitions=settings.topic_partitions,
            retention=timedelta(hours=settings.outbox_retention_hours),
        )
        runtime.extra.update(consumer=consumer, relay=relay)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(relay.run(stop))]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.stop()

    app = FastAPI(title="ICC command centre", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(router)
    return app
