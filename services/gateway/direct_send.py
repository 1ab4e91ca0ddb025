"""One encoded frame written straight to many WebSockets.

A change watched by thousands of screens is the same bytes on every connection. Sent through the
ASGI path, each connection would wake its own sender task, build its own frame and write it: at
10,000 clients that per-connection work is what the last screen waits for. So the gateway's uvicorn
WebSocket protocol offers, as an ASGI extension in the connection's scope, a `write` that puts an
already-encoded frame on the socket at once, or refuses when it cannot do so in order and without
buffering: the handshake is not complete, a close is under way, or the socket has stopped taking
data (the transport paused writing). A refused frame takes the ordinary path, the connection's
bounded queue, so slow clients are handled exactly as before.

The extension also offers `abort`, to cut off a connection that will not take even its close
frame. It is optional: under another server the gateway queues every frame.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from asyncio import BaseTransport
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from shared.settings import get_settings

EXTENSION = "icc.direct_send"
DirectWrite = Callable[[bytes], bool]


def text_frame(text: str) -> bytes:
    """A whole unmasked text frame as a server sends it (no extension: deflate is never agreed)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def direct_write(scope: dict[str, object]) -> DirectWrite | None:
    """The connection's direct `write`, when the server offers one."""
    found: DirectWrite | None = _offered(scope, "write")
    return found


def direct_abort(scope: dict[str, object]) -> Callable[[], None] | None:
    """Drop the connection at once (TCP reset, nothing more sent), when the server offers it: for a
    peer that does not even take the close frame."""
    found: Callable[[], None] | None = _offered(scope, "abort")
    return found


def _offered(scope: dict[str, object], name: str) -> Any:
    extensions = scope.get("extensions")
    offered = extensions.get(EXTENSION) if isinstance(extensions, dict) else None
    return offered.get(name) if isinstance(offered, dict) else None


class DirectSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the direct-send extension and a bounded kernel
    send buffer (`ICC_STREAM_SEND_BUFFER_BYTES`)."""

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        size = get_settings().stream_send_buffer_bytes
        sock = transport.get_extra_info("socket")
        if size and sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket: nothing to bound
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = {"write": self.write_encoded, "abort": self.abort}

    def abort(self) -> None:
        """Reset the connection: what waits to be sent is dropped, in this process and in the kernel
        (a zero linger time), so a peer that reads nothing holds nothing here afterwards."""
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def write_encoded(self, frame: bytes) -> bool:
        """Write `frame` now if the connection is open and taking data; say whether it was."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True
