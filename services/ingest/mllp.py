"""HL7 v2 over MLLP: the TCP framing integration engines speak (`0x0B` message `0x1C 0x0D`).

Each frame is one message (or batch) and gets one framed ACK back, in order, only after the outcome
is stored, exactly as over HTTP. MLLP carries no signature, so who may connect is decided by the
peer's address: the server binds to loopback unless told otherwise, and an allow-list maps
addresses or networks to the source name that messages from them are recorded under. Anything
else is disconnected at once.

A connection that sends nothing for `ICC_MLLP_IDLE_SECONDS` is closed (a half-sent frame then
pending is dropped, and both are logged), so idle and abandoned connections do not pile up. A fault
in ICC while taking one frame is logged and answered with an ACK (AE with ERR 207), and the
connection goes on with the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from services.ingest.event_time_bounds import received_by
from services.ingest.hl7_ack import build_ack
from services.ingest.hl7_er7 import AckCode, ErrorCode, Hl7Problem
from services.ingest.hl7_intake import Hl7Intake, Reply
from shared.settings import Settings

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
CONTENT_TYPE = "x-application/hl7-v2+er7; transport=mllp"
_READ_SIZE = 65536
IDLE_SECONDS = 600.0  # ICC_MLLP_IDLE_SECONDS's default


class AllowListError(ValueError):
    pass


@dataclass(frozen=True)
class AllowRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    source: str


def parse_allow_list(text: str) -> tuple[AllowRule, ...]:
    """`127.0.0.1=pas, 10.20.0.0/16=pas-north` → rules; the most specific network wins."""
    rules: list[AllowRule] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        address, sep, source = entry.partition("=")
        if not sep or not source.strip():
            raise AllowListError(f"ICC_MLLP_SOURCES entry {entry!r} is not ADDRESS=SOURCE")
        try:
            network = ipaddress.ip_network(address.strip(), strict=False)
        except ValueError as exc:
            raise AllowListError(f"ICC_MLLP_SOURCES entry {entry!r}: {exc}") from exc
        rules.append(AllowRule(network, source.strip()))
    return tuple(sorted(rules, key=lambda r: r.network.prefixlen, reverse=True))


def source_for(peer: str, rules: tuple[AllowRule, ...]) -> str | None:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in rules:
        if address.version == rule.network.version and address in rule.network:
            return rule.source
    return None


class FrameTooLarge(Exception):
    pass


class Idle(Exception):
    """Nothing arrived for the idle time; `partial` is the length of a frame left unfinished, if any."""

    def __init__(self, partial: int | None) -> None:
        super().__init__(partial)
        self.partial = partial


async def frames(reader: asyncio.StreamReader, limit: int, idle: float | None = None) -> AsyncIterator[bytes]:
    """The frames of one connection. Bytes outside a frame are skipped; a start block inside a frame
    abandons the unfinished one (the sender started over); a frame over `limit` raises FrameTooLarge;
    no bytes for `idle` seconds (None: no limit) raises Idle."""
    buffer = bytearray()
    in_frame = False
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await reader.read(_READ_SIZE)
        except TimeoutError:
            raise Idle(len(buffer) if in_frame else None) from None
        if not chunk:
            return
        buffer += chunk
        while True:
            if not in_frame:
                start = buffer.find(START_BLOCK)
                if start < 0:
                    buffer.clear()
                    break
                del buffer[: start + 1]
                in_frame = True
            end = buffer.find(END_BLOCK)
            restart = buffer.find(START_BLOCK)
            if restart >= 0 and (end < 0 or restart < end):
                del buffer[: restart + 1]
                continue
            if end < 0:
                if len(buffer) > limit:
                    raise FrameTooLarge(f"a frame exceeds {limit} bytes")
                break
            frame = bytes(buffer[:end])
            del buffer[: end + len(END_BLOCK)]
            in_frame = False
            yield frame


class MllpServer:
    def __init__(
        self,
        intake: Hl7Intake,
        *,
        host: str,
        port: int,
        rules: tuple[AllowRule, ...],
        max_frame: int,
        idle_seconds: float = IDLE_SECONDS,
        settings: Settings | None = None,
    ) -> None:
        self.intake = intake
        # the receiving runtime's settings, which event times are judged by; None: the process's
        self.settings = settings
        self.host = host
        self.port = port
        self.rules = rules
        self.max_frame = max_frame
        self.idle = idle_seconds or None  # 0: never closed for being idle
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"mllp://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info(
            "MLLP listening on %s for %s", self.endpoint, ", ".join(sorted({r.source for r in self.rules}))
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        source = source_for(address, self.rules)
        if source is None:
            self.refused += 1
            log.warning("MLLP connection from %s refused: not in ICC_MLLP_SOURCES", address)
            writer.close()
            return
        self._connections.add(writer)
        try:
            async for frame in frames(reader, self.max_frame, self.idle):
                reply = await self._reply(frame, source)
                writer.write(START_BLOCK + reply.ack.encode() + END_BLOCK)
                await writer.drain()
        except Idle as exc:
            if exc.partial is None:
                log.info("MLLP connection from %s (%s) closed: idle for %g s", address, source, self.idle)
            else:
                log.warning(
                    "MLLP connection from %s (%s) closed: idle for %g s in a frame; its %d bytes dropped",
                    address,
                    source,
                    self.idle,
                    exc.partial,
                )
        except FrameTooLarge as exc:
            problem = Hl7Problem(ErrorCode.segment_sequence, f"{exc}; the connection is closed")
            ack = build_ack(None, AckCode.reject, [problem], now=datetime.now(UTC))
            with contextlib.suppress(ConnectionError):
                writer.write(START_BLOCK + ack.encode() + END_BLOCK)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _reply(self, frame: bytes, source: str) -> Reply:
        try:
            with received_by(self.settings) if self.settings is not None else contextlib.nullcontext():
                return await self.intake.receive(
                    frame, source=source, endpoint=self.endpoint, content_type=CONTENT_TYPE
                )
        except Exception:  # a fault in ICC: this frame is answered, and the connection serves the next
            log.exception("MLLP frame from %s failed in ICC", source)
            return await self.intake.failed(
                frame, source=source, endpoint=self.endpoint, content_type=CONTENT_TYPE
            )
