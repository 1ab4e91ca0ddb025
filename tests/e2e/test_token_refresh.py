"""`POST /v1/token/refresh` on the gateway: a fresh token for the same person or screen, which renews
an open stream, refused once the token has expired or its session is older than the maximum."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import orjson
import pytest

from icc.stack import Stack
from shared.auth import Role, mint_token
from shared.problems import PROBLEM_JSON
from shared.secrets_store import Secrets
from tests.helpers import StreamClient

pytestmark = pytest.mark.e2e

SCOPES = ["site:RXN01", "ward:RXN02-W1"]


def wall_token(secrets: Secrets, ttl_seconds: int, auth_time: int | None = None) -> str:
    return mint_token(
        secrets.jwt_secret,
        subject="wall-amu",
        role=Role.wall_display,
        scopes=SCOPES,
        ttl_seconds=ttl_seconds,
        auth_time=auth_time,
    )


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def refresh(stack: Stack, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient() as client:
        return await client.post(f"{stack.url_of('gateway')}/v1/token/refresh", headers=headers)


def assert_refused(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == "Bearer"
    assert detail in response.json()["detail"], response.json()


async def test_a_refreshed_token_keeps_who_and_where_and_renews_the_stream(
    stack: Stack, test_secrets: Secrets
) -> None:
    old = wall_token(test_secrets, 5)
    gateway = stack.url_of("gateway")
    client = await StreamClient.connect(gateway, old, "site:RXN01")
    await client.next("snapshot")
    await asyncio.sleep(2)  # `exp` is in whole seconds: let the new token's be later than the old one's

    response = await refresh(stack, old)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    new = response.json()["token"]
    before, after = claims_of(old), claims_of(new)
    assert {k: after[k] for k in ("iss", "sub", "role", "scopes", "auth_time")} == {
        k: before[k] for k in ("iss", "sub", "role", "scopes", "auth_time")
    }
    assert after["exp"] - after["iat"] == 5, "the same lifetime as the old token"

    # renewing the open connection with it, which then outlives the old token
    await client.ws.send(orjson.dumps({"type": "auth", "token": new}).decode())
    ready = await client.next("ready")
    assert ready["subject"] == "wall-amu" and ready["role"] == "wall_display"
    assert ready["scopes"] == SCOPES and ready["unsubscribed"] == []
    await asyncio.sleep(max(0.0, before["exp"] + 1 - time.time()))
    await client.ping()
    assert (await client.next("pong", timeout=5))["type"] == "pong", "still open past the old expiry"

    # and a new connection takes it too
    fresh = await StreamClient.connect(gateway, new, "site:RXN01")
    await fresh.next("snapshot")
    await fresh.close()
    await client.close()

    # an expired token is refused, whatever its session
    assert_refused(await refresh(stack, old), "token expired")


async def test_refresh_is_refused_past_the_maximum_session_and_to_bad_tokens(
    stack: Stack, test_secrets: Secrets
) -> None:
    max_session = int(stack.settings.max_session_hours * 3600)
    began = int(time.time()) - max_session - 60
    assert_refused(await refresh(stack, wall_token(test_secrets, 60, auth_time=began)), "session older than")
    # a session just inside the maximum still refreshes, and keeps its start
    inside = int(time.time()) - max_session + 60
    response = await refresh(stack, wall_token(test_secrets, 60, auth_time=inside))
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["token"])["auth_time"] == inside

    assert_refused(await refresh(stack, None), "Authorization: Bearer")
    assert_refused(await refresh(stack, "not-a-jwt"), "invalid token")
    forged = mint_token("x" * 32, subject="wall-amu", role=Role.admin, scopes=["system:QXN"])
    assert_refused(await refresh(stack, forged), "invalid token")
