"""`WS /v1/stream`: authenticate with the first message, subscribe to scopes, receive snapshot + deltas,
act on escalations (`{"type": "act", ...}`, answered by `act_result`), and renew the token with a
further `auth` before it expires.

Close codes (docs/stream.md): 4400 bad message, 4401 not authenticated or token expired, 4403 scope
not allowed, 4408 too slow (stayed behind for too long, or left too many requests unanswered), 4410
idle (nothing heard from the client for too long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from services.gateway.direct_send import direct_abort, direct_write, text_frame
from services.gateway.live_state import CLOSE_TOO_SLOW, LiveState, Subscriber
from shared.auth import AuthError, Principal, Scope, exists, verify_token
from shared.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

AUTH_TIMEOUT_SECONDS = 10.0
# Requests whose answers may wait unsent at once: a client that keeps asking but reads nothing is
# closed as too slow rather than left to fill the gateway's memory with snapshots and pongs.
MAX_UNANSWERED = 64
ANSWERED = frozenset({"auth", "subscribe", "ping", "act"})
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE = 4410
# A connection closed as too slow (or on its token's expiry) must take the close frame within this
# long, or it is cut off: a peer whose socket stays open but never reads (a frozen screen) would
# otherwise hold it forever.
CLOSE_DEADLINE_SECONDS = 10.0
PONG = orjson.dumps({"type": "pong"}).decode()
PONG_FRAME = text_frame(PONG)


async def _receive_json(ws: WebSocket, timeout: float | None = None) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        text = await ws.receive_text()
    message = orjson.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("a message is a JSON object with a string `type`")
    return message


@dataclass(frozen=True)
class Credentials:
    """What the last `auth` message established: who, the token acts carry, and until when."""

    principal: Principal
    token: str
    expires_at: float  # the token's `exp`, Unix seconds


def _credentials(runtime: Runtime, message: dict[str, Any]) -> Credentials:
    token = message.get("token")
    if not isinstance(token, str):
        raise AuthError('an auth message is {"type": "auth", "token": ...}')
    principal = verify_token(runtime.secrets.jwt_secret, token)
    # verified just above, which requires an `exp`: only read it again
    expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    return Credentials(principal, token, expires_at)


def _ready(credentials: Credentials, *, unsubscribed: list[Scope] | None = None) -> str:
    """The answer to an `auth`; to a renewal, with the subscriptions the new token ended."""
    principal = credentials.principal
    ready: dict[str, Any] = {
        "type": "ready",
        "subject": principal.subject,
        "role": principal.role.value,
        "scopes": [str(s) for s in principal.scopes],
        "expires_at": datetime.fromtimestamp(credentials.expires_at, UTC).isoformat(),
    }
    if unsubscribed is not None:
        ready["unsubscribed"] = [str(s) for s in unsubscribed]
    return orjson.dumps(ready).decode()


async def _authenticate(ws: WebSocket, runtime: Runtime) -> Credentials | None:
    try:
        message = await _receive_json(ws, AUTH_TIMEOUT_SECONDS)
        if message["type"] != "auth":
            raise AuthError('the first message must be {"type": "auth", "token": ...}')
        return _credentials(runtime, message)
    except (AuthError, ValueError, TimeoutError) as exc:
        reason = exc.detail if isinstance(exc, AuthError) else str(exc) or "authentication timed out"
        await ws.close(CLOSE_UNAUTHENTICATED, reason[:120])
        return None


async def _sender(ws: WebSocket, subscriber: Subscriber) -> None:
    while True:
        # No timeout per send (that costs a task per frame): a socket that stops taking frames
        # leaves its queue coalescing, and the gateway closes it once that lasts too long.
        frame = await subscriber.next_frame()
        subscriber.sending = True  # until written, later frames must queue behind this one
        try:
            await ws.send_text(frame)
        finally:
            subscriber.sending = False


ACTIONS = ("acknowledge", "note", "resolve", "raise")


def _act_request(message: dict[str, Any]) -> tuple[str, dict[str, Any] | None] | str:
    """The command-centre path and body for an `act` message, or what is wrong with it."""
    action, ident, text = message.get("action"), message.get("id"), message.get("text")
    if action not in ACTIONS:
        return f"action must be one of {list(ACTIONS)}"
    if text is not None and not isinstance(text, str):
        return "text must be a string"
    if action == "raise":
        body = {k: message[k] for k in ("scope", "reason", "severity", "key") if message.get(k) is not None}
        return "/v1/escalations", body
    if not isinstance(ident, str):
        return f"{action} needs the escalation's `id`"
    if action == "note":
        return f"/v1/escalations/{ident}/notes", {"text": text or ""}
    if action == "resolve":
        return f"/v1/escalations/{ident}/resolve", {"note": text} if text else None
    return f"/v1/escalations/{ident}/acknowledge", None


async def act(runtime: Runtime, token: str, message: dict[str, Any]) -> str:
    """Carry an escalation action to command-centre with the user's own token; answer its verdict.

    Command-centre decides who may do what, so the WebSocket and REST can never disagree. The
    answer echoes the client's `ref` so a page can match it to the button that asked.
    """
    result: dict[str, Any] = {"type": "act_result", "id": message.get("id"), "action": message.get("action")}
    if message.get("ref") is not None:
        result["ref"] = message["ref"]
    request = _act_request(message)
    if isinstance(request, str):
        return orjson.dumps({**result, "status": 400, "detail": request}).decode()
    path, body = request
    client: httpx.AsyncClient = runtime.extra["command_centre"]
    try:
        response = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return orjson.dumps(
            {**result, "status": 503, "detail": f"command centre unreachable: {exc}"}
        ).decode()
    answer = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    if response.is_success:
        result["id"] = answer.get("id", result["id"])
        return orjson.dumps({**result, "status": response.status_code, "escalation": answer}).decode()
    result.update(status=response.status_code, detail=answer.get("detail"))
    if answer.get("errors"):
        result["errors"] = answer["errors"]
    return orjson.dumps(result).decode()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    runtime: Runtime = ws.app.state.runtime
    live: LiveState = runtime.extra["live"]
    await ws.accept()
    credentials = await _authenticate(ws, runtime)
    if credentials is None:
        return
    subscriber = Subscriber(direct=direct_write(ws.scope), limit=runtime.settings.stream_queue_frames)
    await ws.send_text(_ready(credentials))
    live.connect(subscriber)
    sender = asyncio.create_task(_sender(ws, subscriber))
    slow = asyncio.create_task(subscriber.too_slow.wait())
    # The receive loop runs here; the sender ending (socket gone), the subscriber falling too far
    # behind or the token expiring interrupts it. Callbacks rather than a task and a wait per
    # message: a screen's pings are most of what 10,000 connections send.
    handler = asyncio.current_task()
    assert handler is not None
    loop = asyncio.get_running_loop()
    ended_by: list[str] = []

    def interrupt(reason: str) -> None:
        if not ended_by:
            ended_by.append(reason)
            handler.cancel()

    def task_ended(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:  # the socket went away under the sender: nothing to report
            log.debug("stream sender ended: %r", task.exception())
        interrupt("too slow" if task is slow else "sender ended")

    def expire_at(expires_at: float) -> asyncio.TimerHandle:
        return loop.call_later(max(0.0, expires_at - time.time()), interrupt, "token expired")

    sender.add_done_callback(task_ended)
    slow.add_done_callback(task_ended)
    expiry = expire_at(credentials.expires_at)
    try:
        while True:
            try:
                message = await _receive_json(ws, runtime.settings.stream_idle_seconds)
            except TimeoutError:
                await ws.close(CLOSE_IDLE, "nothing received from the client; send a ping every 15 s")
                return
            if message["type"] in ANSWERED and subscriber.unanswered >= MAX_UNANSWERED:
                await _close_unread(ws, CLOSE_TOO_SLOW, "too many requests unanswered; read the answers")
                return
            if message["type"] == "ping":
                subscriber.deliver([(PONG, None)], PONG_FRAME, answer=True)
            elif message["type"] == "subscribe":
                try:
                    scope = Scope.parse(str(message.get("scope", "")))
                except ValueError as exc:
                    await ws.close(CLOSE_BAD_MESSAGE, str(exc)[:120])
                    return
                if not exists(scope, runtime.org) or not credentials.principal.may_see(scope, runtime.org):
                    await ws.close(CLOSE_FORBIDDEN, f"scope {scope} not allowed for this token"[:120])
                    return
                cursor = message.get("cursor")
                subscriber.offer(
                    live.subscribe(subscriber, scope, cursor if isinstance(cursor, str) else None),
                    answer=True,
                )
            elif message["type"] == "act":
                subscriber.offer(await act(runtime, credentials.token, message), answer=True)
            elif message["type"] == "unsubscribe":
                live.unsubscribe(subscriber)
            elif message["type"] == "auth":
                try:
                    credentials = _credentials(runtime, message)
                except AuthError as exc:
                    await ws.close(CLOSE_UNAUTHENTICATED, exc.detail[:120])
                    return
                expiry.cancel()
                expiry = expire_at(credentials.expires_at)
                principal = credentials.principal
                ended = sorted(s for s in subscriber.scopes if not principal.may_see(s, runtime.org))
                live.unsubscribe(subscriber, ended)
                subscriber.offer(_ready(credentials, unsubscribed=ended), answer=True)
            else:
                await ws.close(CLOSE_BAD_MESSAGE, f"unknown message type {message['type']!r}"[:120])
                return
    except asyncio.CancelledError:
        if not ended_by:
            raise  # the server is stopping
        handler.uncancel()
        if ended_by[0] == "too slow":
            await _close_unread(ws, CLOSE_TOO_SLOW, "client too slow; reconnect for a fresh snapshot")
        elif ended_by[0] == "token expired":
            reason = "token expired; renew it in time with an auth message"
            await _close_unread(ws, CLOSE_UNAUTHENTICATED, reason)
    except WebSocketDisconnect:
        return
    except ValueError as exc:
        with contextlib.suppress(RuntimeError):
            await ws.close(CLOSE_BAD_MESSAGE, f"not JSON: {exc}"[:120])
    finally:
        ended_by.append("handler ended")  # from here on, the tasks ending interrupt nothing
        expiry.cancel()
        live.disconnect(subscriber)
        sender.cancel()
        slow.cancel()


async def _close_unread(ws: WebSocket, code: int, reason: str) -> None:
    """Close a connection that may not be reading; cut it off if even the close frame cannot go
    out in time."""
    try:
        async with asyncio.timeout(CLOSE_DEADLINE_SECONDS):
            await ws.close(code, reason)
    except (RuntimeError, WebSocketDisconnect):
        return  # already closed or gone
    except TimeoutError:
        abort = direct_abort(ws.scope)
        if abort is not None:
            log.info("stream connection cut off: it took no frame, not even the close, for too long")
            abort()
