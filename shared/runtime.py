"""What every service loads at start-up: settings, organisation, secrets, database pool, broker address."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request

from shared.auth import AuthError, Principal, Scope, exists, verify_token
from shared.db import create_pool, ping
from shared.kafka import broker_ready
from shared.organisation import Organisation, load_organisation
from shared.problems import OrjsonResponse, Problem
from shared.secrets_store import Secrets, load_or_create
from shared.settings import Settings, get_settings


class ConfigurationError(RuntimeError):
    pass


@dataclass
class Runtime:
    settings: Settings
    org: Organisation
    secrets: Secrets
    database_url: str
    bootstrap: str
    pool: asyncpg.Pool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("database pool not started")
        return self.pool

    async def start(self, *, pool_size: int = 10) -> None:
        self.pool = await create_pool(self.database_url, max_size=pool_size)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None


# Young-generation threshold of the cyclic garbage collector once a service has started (CPython's
# default is 700). See `settle_heap`.
YOUNG_GC_THRESHOLD = 50_000


def settle_heap() -> None:
    """Call once at the end of a service's start-up: keep the collector's work proportional to garbage.

    CPython's cyclic collector runs a young-generation pass whenever container allocations exceed
    deallocations by 700, an older-generation pass every 10 of those, and a full one every 10 of
    those (when enough has survived). Two things make that expensive here:

    - Start-up leaves some 10^5 long-lived objects (pydantic and FHIR model classes, the
      organisation, loaded state) that every full collection would walk again. `gc.freeze()` moves
      what exists now into a permanent generation that no collection looks at.
    - A large request (a 1,000-entry FHIR Bundle or NDJSON batch) keeps hundreds of thousands of
      young objects alive until it is answered; with a threshold of 700 each of them is scanned
      and promoted again and again while the batch is built (about half the time of validating a
      Bundle in a measurement). A threshold of 50,000 makes those passes ~70 times rarer.

    Reference counting still frees acyclic garbage at once; only reference cycles wait longer for a
    collection, and they are bounded by the threshold. Nothing is disabled.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def load_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or get_settings()
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL is not set (run `icc up`, or point it at a PostgreSQL server)")
    if not settings.kafka_bootstrap:
        raise ConfigurationError("KAFKA_BOOTSTRAP is not set (run `icc up`, or point it at a Kafka cluster)")
    return Runtime(
        settings=settings,
        org=load_organisation(settings.org_file),
        secrets=load_or_create(settings.resolved_secrets_file),
        database_url=settings.database_url,
        bootstrap=settings.kafka_bootstrap,
    )


async def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def current_user(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            "send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return verify_token((await runtime_of(request)).secrets.jwt_secret, token)
    except AuthError as exc:
        raise Problem(
            401, "unauthenticated", "Invalid token", exc.detail, headers={"WWW-Authenticate": "Bearer"}
        ) from exc


CurrentUser = Annotated[Principal, Depends(current_user)]
CurrentRuntime = Annotated[Runtime, Depends(runtime_of)]


def require_scope(user: Principal, runtime: Runtime, scope: Scope) -> None:
    """404 for a place that does not exist, 403 for one the token does not cover."""
    if not exists(scope, runtime.org):
        raise Problem(404, "not-found", "No such place", f"{scope} is not in the organisation model")
    if not user.may_see(scope, runtime.org):
        raise Problem(403, "forbidden", "Outside your scope", f"your token does not cover {scope}")


async def readiness(runtime: Runtime) -> OrjsonResponse:
    checks = {
        "database": runtime.pool is not None and await _safe_ping(runtime.pool),
        "broker": await broker_ready(runtime.bootstrap),
    }
    return OrjsonResponse(
        {"status": "ready" if all(checks.values()) else "not ready", "checks": checks},
        status_code=200 if all(checks.values()) else 503,
    )


async def _safe_ping(pool: asyncpg.Pool) -> bool:
    try:
        return await ping(pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For child processes: SIGTERM when the process that started them dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def end_with_supervisor() -> None:
    """For a worker process started by `multiprocessing` (a uvicorn worker): end when its supervisor
    does, even one killed outright. A supervisor that died before this call sends no signal, so
    that case is checked after the fact."""
    parent = multiprocessing.parent_process()
    die_with_parent()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGTERM)
