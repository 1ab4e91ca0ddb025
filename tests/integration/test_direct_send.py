"""The gateway's WebSocket protocol and its direct-send extension, over a real socket: frames
written directly and frames sent through ASGI arrive in order, a closing connection refuses, the
send buffer is bounded, and `abort` cuts a connection off."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from icc.embedded import free_port
from services.gateway.direct_send import DirectSendProtocol, direct_abort, direct_write, text_frame
from shared.settings import get_settings
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


async def test_the_send_buffer_is_bounded_and_abort_cuts_the_connection_off() -> None:
    """The kernel send buffer is the configured size (Linux reports twice what was set), and `abort`
    ends the connection at once, without a close frame."""
    buffers: list[int] = []

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        write = direct_write(ws.scope)
        assert write is not None
        sock = write.__self__.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        buffers.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        await ws.send_text("hello")
        abort = direct_abort(ws.scope)
        assert abort is not None
        abort()
        with contextlib.suppress(Exception):
            await ws.receive_text()

    async with serving(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as port:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            assert await client.recv() == "hello"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), 10)
            assert client.close_code == 1006
    assert buffers == [2 * get_settings().stream_send_buffer_bytes]
