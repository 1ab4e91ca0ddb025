"""`WS /v1/stream`: authenticate with the first message, subscribe to scopes, receive snapshot + deltas,
and act on escalations (`{"type": "act", ...}`, answered by `act_result`).

Close codes (docs/stream.md): 4400 bad message, 4401 not authenticated, 4403 scope not allowed,
4408 too slow (stayed behind for too long), 4410 idle (nothing heard from the client for too long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from services.gateway.direct_send import direct_abort, direct_write, text_frame
from services.gateway.live_state import CLOSE_TOO_SLOW, LiveState, Subscriber
from shared.auth import AuthError, Principal, Scope, exists, verify_token
from shared.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

AUTH_TIMEOUT_SECONDS = 10.0
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE = 4410
# A connection closed as too slow must take the close frame within this long, or it is cut off:
# a peer whose socket stays open but never reads (a frozen screen) would otherwise hold it forever.
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


async def _authenticate(ws: WebSocket, runtime: Runtime) -> tuple[Principal, str] | None:
    try:
        message = await _receive_json(ws, AUTH_TIMEOUT_SECONDS)
        if message["type"] != "auth" or not isinstance(message.get("token"), str):
            raise AuthError('the first message must be {"type": "auth", "token": ...}')
        return verify_token(runtime.secrets.jwt_secret, message["token"]), message["token"]
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
    authenticated = await _authenticate(ws, runtime)
    if authenticated is None:
        return
    principal, token = authenticated
    subscriber = Subscriber(direct=direct_write(ws.scope), limit=runtime.settings.stream_queue_frames)
    await ws.send_text(
        orjson.dumps(
            {
                "type": "ready",
                "subject": principal.subject,
                "role": principal.role.value,
                "scopes": [str(s) for s in principal.scopes],
            }
        ).decode()
    )
    sender = asyncio.create_task(_sender(ws, subscriber))
    slow = asyncio.create_task(subscriber.too_slow.wait())
    # The receive loop runs here; the sender ending (socket gone) or the subscriber falling too far
    # behind interrupts it. Callbacks rather than a task and a wait per message: a screen's pings
    # are most of what 10,000 connections send.
    handler = asyncio.current_task()
    assert handler is not None
    ended_by: list[asyncio.Task[Any]] = []

    def interrupt(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:  # the socket went away under the sender: nothing to report
            log.debug("stream sender ended: %r", task.exception())
        if not ended_by:
            ended_by.append(task)
            handler.cancel()

    sender.add_done_callback(interrupt)
    slow.add_done_callback(interrupt)
    try:
        while True:
            try:
                message = await _receive_json(ws, runtime.settings.stream_idle_seconds)
            except TimeoutError:
                await ws.close(CLOSE_IDLE, "nothing received from the client; send a ping every 15 s")
                return
            if message["type"] == "ping":
                subscriber.deliver([(PONG, None)], PONG_FRAME)
            elif message["type"] == "subscribe":
                try:
                    scope = Scope.parse(str(message.get("scope", "")))
                except ValueError as exc:
                    await ws.close(CLOSE_BAD_MESSAGE, str(exc)[:120])
                    return
                if not exists(scope, runtime.org) or not principal.may_see(scope, runtime.org):
                    await ws.close(CLOSE_FORBIDDEN, f"scope {scope} not allowed for this token"[:120])
                    return
                cursor = message.get("cursor")
                subscriber.offer(
                    live.subscribe(subscriber, scope, cursor if isinstance(cursor, str) else None)
                )
            elif message["type"] == "act":
                subscriber.offer(await act(runtime, token, message))
            elif message["type"] == "unsubscribe":
                live.unsubscribe(subscriber)
            else:
                await ws.close(CLOSE_BAD_MESSAGE, f"unknown message type {message['type']!r}"[:120])
                return
    except asyncio.CancelledError:
        if not ended_by:
            raise  # the server is stopping
        handler.uncancel()
        if ended_by[0] is slow:
            await _close_too_slow(ws)
    except WebSocketDisconnect:
        return
    except ValueError as exc:
        with contextlib.suppress(RuntimeError):
            await ws.close(CLOSE_BAD_MESSAGE, f"not JSON: {exc}"[:120])
    finally:
        ended_by.append(handler)  # from here on, the tasks ending interrupt nothing
        live.unsubscribe(subscriber)
        sender.cancel()
        slow.cancel()


async def _close_too_slow(ws: WebSocket) -> None:
    """Close with 4408; cut the connection off if even the close frame cannot go out in time."""
    try:
        async with asyncio.timeout(CLOSE_DEADLINE_SECONDS):
            await ws.close(CLOSE_TOO_SLOW, "client too slow; reconnect for a fresh snapshot")
    except (RuntimeError, WebSocketDisconnect):
        return  # already closed or gone
    except TimeoutError:
        abort = direct_abort(ws.scope)
        if abort is not None:
            log.info("stream connection cut off: it took no frame, not even the close, for too long")
            abort()
