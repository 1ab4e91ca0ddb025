"""PostgreSQL plumbing: connection URLs, the asyncpg pool, and migrations through Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy/Alembic, through the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


async def next_ids(conn: asyncpg.Connection, table: str, count: int) -> list[int]:
    """`count` new ids from the serial sequence of `table.id`, ascending, in one round trip.

    For appends that write their rows by `COPY` or a multi-row insert and need the ids first.
    """
    ids = await conn.fetchval(
        "SELECT array_agg(v ORDER BY v) FROM "
        "(SELECT nextval(pg_get_serial_sequence($1, 'id')) AS v FROM generate_series(1, $2)) AS n",
        table,
        count,
    )
    return list(ids or [])


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON and JSONB as Python values (orjson), on every connection ICC opens."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=init_connection, command_timeout=60
    )
    assert pool is not None
    return pool


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "heads") -> None:
    """Apply migrations up to `revision` (blocking: run it before the event loop, or in a thread)."""
    command.upgrade(alembic_config(url), revision)


async def ping(pool: asyncpg.Pool) -> bool:
    value: Any = await pool.fetchval("SELECT 1")
    return bool(value == 1)
