"""One encoded frame written straight to many WebSockets.

A change watched by thousands of screens is the same bytes on every connection. Sent through the
ASGI path, each connection would wake its own sender task, build its own frame and write it: at
10,000 clients that per-connection work is what the last screen waits for. So the gateway's uvicorn
WebSocket protocol offers, as an ASGI extension in the connection's scope, a `write` that puts an
already-encoded frame on the socket at once, or refuses when it cannot do so in order and without
buffering: the handshake is not complete, a close is under way, or the socket has stopped taking
data (the transport paused writing). A refused frame takes the ordinary path, the connection's
bounded queue, so slow clients are handled exactly as before.

The extension is optional: under another server the gateway queues every frame.
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

EXTENSION = "icc.direct_send"
DirectWrite = Callable[[bytes], bool]


def text_frame(text: str) -> bytes:
    """A whole unmasked text frame as a server sends it (no extension: deflate is never agreed)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def direct_write(scope: dict[str, object]) -> DirectWrite | None:
    """The connection's direct `write`, when the server offers one."""
    extensions = scope.get("extensions")
    offered = extensions.get(EXTENSION) if isinstance(extensions, dict) else None
    return offered.get("write") if isinstance(offered, dict) else None


class DirectSendProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus the direct-send extension."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = {"write": self.write_encoded}

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
