"""The gateway's WebSocket protocol and its direct-send extension, over a real socket: frames
written directly and frames sent through ASGI arrive in order, and a closing connection refuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from icc.embedded import free_port
from services.gateway.direct_send import DirectSendProtocol, direct_write, text_frame
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def serving(
    app: Starlette, ws: type[asyncio.Protocol] | str = DirectSendProtocol
) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(app, port=port, ws=ws, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), timeout=10, interval=0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def test_direct_frames_and_asgi_frames_arrive_in_the_order_written() -> None:
    refused_after_close: list[bool] = []

    async def endpoint(ws: WebSocket) -> None:
        write = direct_write(ws.scope)
        assert write is not None, "the gateway's protocol offers the extension"
        assert not write(text_frame("too early")), "nothing is written before the handshake"
        await ws.accept()
        await ws.send_text("one")
        assert write(text_frame("two") + text_frame("three " + "x" * 70_000))
        await ws.send_text("four")
        await ws.receive_text()
        await ws.close(1000)
        refused_after_close.append(not write(text_frame("after the close")))

    async with serving(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as port:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            received = [await client.recv() for _ in range(4)]
            await client.send("bye")
            with contextlib.suppress(Exception):
                await client.recv()
    assert [str(m)[:5] for m in received] == ["one", "two", "three", "four"]
    assert len(received[2]) == len("three ") + 70_000
    assert refused_after_close == [True]


async def test_another_server_offers_no_direct_write() -> None:
    offered: list[object] = []

    async def endpoint(ws: WebSocket) -> None:
        offered.append(direct_write(ws.scope))
        await ws.accept()
        await ws.close(1000)

    async with serving(Starlette(routes=[WebSocketRoute("/ws", endpoint)]), ws="auto") as port:
        async with connect(f"ws://127.0.0.1:{port}/ws") as client:
            with contextlib.suppress(Exception):
                await client.recv()
    assert offered == [None]
