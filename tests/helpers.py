"""Small clients the tests share: a signed webhook poster and a stream subscriber."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import websockets

from shared.auth import SOURCE_HEADER, Role, mint_token, sign_webhook
from shared.sealed import Sealer
from shared.secrets_store import Secrets


def bed_event(
    bed_id: str, status: str, *, at: datetime | None = None, event_id: uuid.UUID | None = None
) -> dict[str, Any]:
    site_id, ward_code = bed_id.split("-")[0], bed_id.split("-")[1]
    body: dict[str, Any] = {
        "site_id": site_id,
        "ward_id": f"{site_id}-{ward_code}",
        "bed_id": bed_id,
        "status": status,
        "occurred_at": (at or datetime.now(UTC)).isoformat(),
    }
    if event_id is not None:
        body["event_id"] = str(event_id)
    return body


def shuffled_bed_history(
    rng: random.Random, beds: list[str], count: int, span: timedelta
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`count` bed events at random times within `span` before now, and each bed's status by event time."""
    start = datetime.now(UTC) - span
    events = [
        bed_event(
            rng.choice(beds),
            rng.choice(["occupied", "unoccupied", "closed", "housekeeping"]),
            at=start + timedelta(seconds=rng.randrange(int(span.total_seconds()))),
            event_id=uuid.uuid4(),
        )
        for _ in range(count)
    ]
    latest: dict[str, tuple[tuple[datetime, bytes], str]] = {}
    for e in events:
        key = (datetime.fromisoformat(e["occurred_at"]), uuid.UUID(e["event_id"]).bytes)
        if e["bed_id"] not in latest or key > latest[e["bed_id"]][0]:
            latest[e["bed_id"]] = (key, e["status"])
    return events, {bed: status for bed, (_, status) in latest.items()}


async def post_signed(
    client: httpx.AsyncClient,
    url: str,
    secrets: Secrets,
    body: dict[str, Any] | bytes,
    source: str = "bedmgmt",
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {
        "content-type": "application/json",
        SOURCE_HEADER: source,
        **sign_webhook(secrets.webhook_secrets[source], raw),
    }
    return await client.post(url, content=raw, headers=headers)


def token(secrets: Secrets, role: Role, *scopes: str) -> str:
    return mint_token(secrets.jwt_secret, subject=f"test-{role.value}", role=role, scopes=list(scopes))


class StreamClient:
    """A real WebSocket client of `/v1/stream`."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.early: list[dict[str, Any]] = []  # deltas read while waiting for an `act_result`

    @classmethod
    async def connect(cls, gateway_url: str, jwt: str, scope: str, cursor: str | None = None) -> StreamClient:
        ws = await websockets.connect(gateway_url.replace("http", "ws", 1) + "/v1/stream")
        client = cls(ws)
        await ws.send(orjson.dumps({"type": "auth", "token": jwt}).decode())
        ready = await client.next("ready")
        assert scope in ready["scopes"] or ready["scopes"], ready
        subscribe: dict[str, Any] = {"type": "subscribe", "scope": scope}
        if cursor is not None:
            subscribe["cursor"] = cursor
        await ws.send(orjson.dumps(subscribe).decode())
        return client

    async def ping(self) -> None:
        """Tell the gateway the client is alive (it closes idle connections with 4410)."""
        await self.ws.send(orjson.dumps({"type": "ping"}).decode())

    async def next(self, *types: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next message of one of `types`, skipping heartbeats."""
        async with asyncio.timeout(timeout):
            while True:
                message = orjson.loads(await self.ws.recv())
                if message["type"] in types:
                    return message
                if message["type"] == "error":
                    raise AssertionError(message)

    async def act(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send an `act` message and return its `act_result`. Deltas that arrive first (the change an
        action makes can reach the stream before the answer to it) are kept for `until`."""
        await self.ws.send(orjson.dumps({"type": "act", **message}).decode())
        async with asyncio.timeout(timeout):
            while True:
                received = await self.next("act_result", "delta", timeout=timeout)
                if received["type"] == "act_result":
                    return received
                self.early.append(received)

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read deltas until one satisfies `predicate`; return it and every delta read on the way
        (starting with those `act` kept)."""
        seen: list[dict[str, Any]] = []
        while self.early:
            delta = self.early.pop(0)
            seen.append(delta)
            if predicate(delta):
                return delta, seen
        async with asyncio.timeout(timeout):
            while True:
                delta = await self.next("delta", timeout=timeout)
                seen.append(delta)
                if predicate(delta):
                    return delta, seen

    async def close(self) -> None:
        await self.ws.close()


def opened(secrets: Secrets, stored: bytes) -> bytes:
    """A raw or quarantined body as it was received (the database holds it sealed)."""
    return Sealer(secrets.raw_store_key).open(bytes(stored))
