"""Composition root of the ingest service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from services.ingest import fhir_api, hl7_intake, json_api, quarantine_replay
from services.ingest.api import router
from services.ingest.group_commit import GroupCommitWriter
from services.ingest.hl7_intake import Hl7Bookkeeping, Hl7Intake, keep_pruned
from services.ingest.hl7_routes import router as hl7_router
from services.ingest.intake import IngestContext, Processor
from services.ingest.location_source import LocationMapSource
from services.ingest.mllp import MllpServer, parse_allow_list
from services.ingest.retention import Retention, keep_purged
from shared import problems
from shared.outbox import OutboxRelay
from shared.runtime import Runtime, load_runtime, settle_heap


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or load_runtime()
    settings = runtime.settings
    locations = LocationMapSource(runtime.org, settings.location_map_file)
    mllp_rules = parse_allow_list(settings.mllp_sources)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        sealer = runtime.secrets.raw_store_sealer()  # current key seals; previous ones still open
        writer = GroupCommitWriter(runtime.db, sealer=sealer, steps=[Hl7Bookkeeping()])
        relay = OutboxRelay(
            runtime.database_url,
            runtime.bootstrap,
            partitions=settings.topic_partitions,
            retention=timedelta(hours=settings.outbox_retention_hours),
        )
        replay_processors: dict[str, Processor] = {
            "/v1/bed-events": json_api.process_bed_events,
            "/v1/bed-management": json_api.process_bed_management,
            "/v1/ed-events": json_api.process_ed,
            "/v1/pas/fhir": fhir_api.process,
            "/v1/pas/hl7v2": hl7_intake.replay,
            "mllp": hl7_intake.replay,
        }
        runtime.extra.update(
            writer=writer,
            relay=relay,
            ingest=IngestContext(
                org=runtime.org,
                pseudonymisation_key=runtime.secrets.pseudonymisation_key,
                locations=locations,
                pool=runtime.db,
                sealer=sealer,
            ),
            replay_processors=replay_processors,
        )
        hl7 = Hl7Intake(writer, runtime.db, locations, runtime.secrets.pseudonymisation_key)
        runtime.extra["hl7"] = hl7
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(writer.run(), name="group-commit"),
            asyncio.create_task(relay.run(stop)),
            asyncio.create_task(keep_pruned(runtime.db, timedelta(days=settings.hl7_dedup_days), stop)),
            asyncio.create_task(keep_purged(runtime.db, Retention.of(settings), stop), name="retention"),
        ]
        mllp = None
        if settings.mllp_port:
            mllp = MllpServer(
                hl7,
                host=settings.mllp_host,
                port=settings.mllp_port,
                rules=mllp_rules,
                max_frame=settings.max_body_bytes,
                idle_seconds=settings.mllp_idle_seconds,
                settings=settings,
            )
            await mllp.start()
            runtime.extra["mllp"] = mllp
        settle_heap()
        try:
            yield
        finally:
            if mllp is not None:
                await mllp.stop()
            stop.set()
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.stop()

    app = FastAPI(title="ICC ingest", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    problems.install(app)
    # Starlette tries routes in order, and each router's routes one by one: the busiest webhooks
    # (single bed events, then the PAS's HL7 feed, a message per patient movement) come first.
    app.include_router(router)
    app.include_router(hl7_router)
    app.include_router(json_api.router)
    app.include_router(fhir_api.router)
    app.include_router(quarantine_replay.router)
    return app
