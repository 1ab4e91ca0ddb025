"""Composition root of the command-centre service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
import httpx
from fastapi import FastAPI

from services.command_centre.api import DECLARED_CHANNEL, router
from services.command_centre.escalation_api import router as escalation_router
from services.command_centre.escalation_engine import EscalationEngine
from services.command_centre.escalation_policy import EscalationRulesError, load_rules
from services.command_centre.notifiers import Backoff, DeliveryLoop, WebhookNotifier
from services.command_centre.projection import StateProjection
from services.command_centre.system_stage import SystemStage, wait_for_any
from shared import problems, topics
from shared.consumer import StoredOffsetConsumer
from shared.opel import load_profile
from shared.outbox import OutboxRelay
from shared.runtime import Runtime, load_runtime, settle_heap
from shared.supervise import supervise

log = logging.getLogger(__name__)


async def _ticks(
    projection: StateProjection, runtime: Runtime, stop: asyncio.Event, wake: asyncio.Event
) -> None:
    """Time-driven refresh of the owned sites (waits grow, midnight passes, declarations start and
    expire) and history flushes; `wake` runs one at once."""
    while not stop.is_set():
        await wait_for_any((stop, wake), runtime.settings.state_tick_seconds)
        if stop.is_set():
            return
        wake.clear()
        try:
            await projection.tick(runtime.db)
            continue
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("state tick failed: %s", exc)
        except Exception:
            # A bug or a bad row must not stop the clock for good (waits would stop growing, midnight
            # never pass, history never flush): log it and try again next period.
            log.exception("state tick failed")
        # the tick's transaction was rolled back: rebuild the sites from what was committed
        async with projection.lock:
            projection.forget()


async def _declarations(runtime: Runtime, stop: asyncio.Event, declared: Callable[[str], None]) -> None:
    """Call `declared(scope)` whenever any replica declares or withdraws a level, so it reaches the
    live state at once. A notice missed while the connection is re-made waits for the next tick."""

    async def listen() -> None:
        conn = await asyncpg.connect(runtime.database_url)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        try:
            await conn.add_listener(DECLARED_CHANNEL, lambda _conn, _pid, _channel, scope: declared(scope))
            await wait_for_any((stop, lost), None)
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await conn.close(timeout=2)
        if not stop.is_set():
            raise ConnectionError("connection to the database lost")

    await supervise("declaration listener", listen, stop)


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or load_runtime()
    settings = runtime.settings
    # an invalid profile refuses start-up, with a message naming the file and the field
    profile = load_profile(settings.opel_profile)
    # so do invalid escalation rules, or a rule naming a metric that does not exist
    rules = load_rules(settings.escalation_rules)
    notifiers = ("webhook",) if settings.escalation_webhook_url else ()
    try:
        engine = EscalationEngine(rules, runtime.org, notifiers=notifiers)
    except EscalationRulesError as exc:
        raise EscalationRulesError(f"{settings.escalation_rules}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        projection = StateProjection(
            runtime.org, profile, partitions=settings.topic_partitions, escalations=engine
        )
        consumer = StoredOffsetConsumer(
            bootstrap=runtime.bootstrap,
            pool=runtime.db,
            group_id=settings.consumer_group,
            topic_names=[topics.BEDS.name, topics.EDFLOW.name],
            handler=projection,
            partitions=settings.topic_partitions,
            fetch_wait_ms=settings.kafka_fetch_wait_ms,
        )
        relay = OutboxRelay(
            runtime.database_url,
            runtime.bootstrap,
            partitions=settings.topic_partitions,
            retention=timedelta(hours=settings.outbox_retention_hours),
        )
        system = SystemStage(runtime.database_url, runtime.org, profile, interval=settings.state_tick_seconds)
        runtime.extra.update(
            consumer=consumer, relay=relay, projection=projection, profile=profile, system=system, rules=rules
        )
        runtime.extra["notifiers"] = notifiers
        webhook_client = httpx.AsyncClient(timeout=10.0)
        stop = asyncio.Event()
        tick_now = asyncio.Event()

        def declared(scope: str) -> None:
            if scope == system.scope:
                system.wake()
            else:
                tick_now.set()

        tasks = [
            asyncio.create_task(consumer.run(stop)),
            asyncio.create_task(relay.run(stop)),
            asyncio.create_task(_ticks(projection, runtime, stop, tick_now)),
            asyncio.create_task(system.run(stop)),
            asyncio.create_task(_declarations(runtime, stop, declared)),
        ]
        if settings.escalation_webhook_url:
            webhook = WebhookNotifier(
                settings.escalation_webhook_url, settings.escalation_webhook_secret, webhook_client
            )
            delivery = DeliveryLoop(
                runtime.db, webhook, backoff=Backoff(max_attempts=settings.escalation_webhook_attempts)
            )
            runtime.extra["delivery"] = delivery
            tasks.append(asyncio.create_task(delivery.run(stop)))
        settle_heap()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await webhook_client.aclose()
            await runtime.stop()

    app = FastAPI(title="ICC command centre", version="0.2.0", lifespan=lifespan)
    app.state.runtime = runtime
    problems.install(app)
    app.include_router(router)
    app.include_router(escalation_router)
    return app
