"""What every service loads at start-up: settings, organisation, secrets, database pool, broker address."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.responses import ORJSONResponse

from shared.auth import AuthError, Principal, Scope, exists, verify_token
from shared.db import create_pool, ping
from shared.gc_tuning import tune_gc
from shared.kafka import broker_ready
from shared.organisation import Organisation, load_organisation
from shared.problems import Problem
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
        tune_gc()

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None


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


async def readiness(runtime: Runtime) -> ORJSONResponse:
    checks = {
        "database": runtime.pool is not None and await _safe_ping(runtime.pool),
        "broker": await broker_ready(runtime.bootstrap),
    }
    return ORJSONResponse(
        {"status": "ready" if all(checks.values()) else "not ready", "checks": checks},
        status_code=200 if all(checks.values()) else 503,
    )


async def _safe_ping(pool: asyncpg.Pool) -> bool:
    try:
        return await ping(pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
