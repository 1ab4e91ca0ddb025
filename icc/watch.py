"""`icc watch`: the live stream in a terminal, one concise line per message.

Reconnects by itself and resumes from the last cursor it received, so an operator sees exactly
what changed while the connection was down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import websockets

RECONNECT_MAX_SECONDS = 15.0
PING_SECONDS = 15.0


def describe(message: dict[str, Any]) -> str:
    """One line for a stream message."""
    kind = message.get("type")
    scope = message.get("scope", "")
    seq = message.get("seq", "")
    if kind == "snapshot":
        return (
            f"snapshot {scope} seq={seq} wards={len(message.get('wards', []))} "
            f"summaries={len(message.get('summaries', []))} escalations={len(message.get('escalations', []))}"
        )
    if kind == "resume":
        # A resume also carries the escalations resolved while away: their status says which.
        wards = [w["ward_id"] for w in message.get("wards", [])]
        escalations = [f"{e.get('id')}:{e.get('status')}" for e in message.get("escalations", [])]
        return (
            f"resume   {scope} seq={seq} missed wards={wards} "
            f"summaries={len(message.get('summaries', []))} escalations={escalations}"
        )
    if kind == "delta":
        if "ward" in message:
            w = message["ward"]
            counts = w.get("counts", {})
            return (
                f"ward     {scope} seq={seq} {w['ward_id']} v{w['version']} "
                f"available={w.get('available')} occupied={counts.get('occupied')} "
                f"closed={counts.get('closed')}"
            )
        if "summary" in message:
            x = message["summary"]
            metrics = x.get("metrics") or {}
            opel = (x.get("opel") or {}).get("effective_level")
            return (
                f"summary  {scope} seq={seq} {x['scope']} v{x['version']} OPEL={opel} "
                f"beds_available={metrics.get('beds_available')} ed={metrics.get('ed_in_department')} "
                f"ambulances={metrics.get('ambulance_queue')}"
            )
        if "escalation" in message:
            e = message["escalation"]
            return (
                f"escalation {scope} seq={seq} {e.get('id')} v{e.get('version')} tier={e.get('tier')} "
                f"status={e.get('status')} reason={e.get('reason')!r}"
            )
    if kind == "ready":
        return f"ready    as {message.get('subject')} ({message.get('role')}) scopes={message.get('scopes')}"
    if kind == "resync":
        return "resync   the gateway coalesced what this client was too slow to read"
    return f"{kind}"


async def watch(
    url: str,
    token: str,
    scopes: list[str],
    out: Callable[[str], None] = print,
    *,
    heartbeats: bool = False,
    limit: int | None = None,
) -> None:
    """Print the stream of `scopes` until cancelled (or `limit` lines are printed)."""
    cursors: dict[str, str] = {}
    printed = 0
    backoff = 0.5
    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/v1/stream"
    while True:
        try:
            async with websockets.connect(ws_url) as ws:
                await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
                pinger = asyncio.create_task(_ping(ws))
                try:
                    async for raw in ws:
                        message = orjson.loads(raw)
                        if message.get("cursor"):
                            cursors[message["scope"]] = message["cursor"]
                        if message["type"] == "ready":
                            for scope in scopes:
                                subscribe = {"type": "subscribe", "scope": scope}
                                if scope in cursors:
                                    subscribe["cursor"] = cursors[scope]
                                await ws.send(orjson.dumps(subscribe).decode())
                            backoff = 0.5
                        if message["type"] in ("heartbeat", "pong") and not heartbeats:
                            continue
                        out(describe(message))
                        printed += 1
                        if limit is not None and printed >= limit:
                            return
                finally:
                    pinger.cancel()
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            out(f"closed   code={code} reason={exc.rcvd.reason if exc.rcvd else ''}")
            if code in (4401, 4403, 4400):
                raise SystemExit(1) from exc
        except OSError as exc:
            out(f"unreachable: {exc}")
        await asyncio.sleep(backoff)
        backoff = min(RECONNECT_MAX_SECONDS, backoff * 2)


async def _ping(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.sleep(PING_SECONDS)
        await ws.send(orjson.dumps({"type": "ping"}).decode())
