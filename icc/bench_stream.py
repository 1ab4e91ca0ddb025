"""Stream benchmark: WebSocket clients held and ingest-202-to-client latency through the gateway,
against a bare `websockets.broadcast` server sending the same frames to the same number of clients
in the same run.

    python -m icc.bench_stream [--clients 100,1000,10000] [--rate 10,10,1] [--seconds 10]
                               [--server-processes N] [--client-processes N]

ICC: the whole stack (ingest, command centre, gateway) as `icc up` starts it, the gateway with one
worker per server process; N clients subscribe to one site; signed bed changes are posted
open-loop at a steady rate; latency runs from the webhook's 202 to the arrival at each client of
the ward delta showing the change. Baseline: a bare server with as many processes as the gateway
(sharing its port with SO_REUSEPORT) that broadcasts every frame it is handed to its subscribers
with `websockets.broadcast`; the load generator hands every process, at the same rate, the frames
the gateway sent for a change (a ward delta and a site summary, taken from this run), and latency
runs from the hand-over to the arrival of the ward frame. The baseline does no ingest, no Kafka and
no state, so it is the floor of the fan-out alone.

Clients of both live in several load-generator processes (many connections each) that only
timestamp frames while measuring and decode them afterwards. Neither side negotiates
permessage-deflate. Targets (reported, never asserted): p99 < 50 ms with 100 clients, < 250 ms
with 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson
import websockets

from icc.bench import (
    LATENCY_SITE,
    Config,
    Sent,
    SiteBedPlan,
    environment,
    percentile,
    post_change,
    progress,
    run,
    running_broker,
    running_stack,
    send_steadily,
)
from icc.embedded import die_with_parent, free_port, wait_for_port
from shared.auth import Role, mint_token
from shared.runtime import settle_heap

WEBHOOK_PATH = "/v1/bed-events"
WEBHOOK_SOURCE = "bedmgmt"
CONNECTING_AT_ONCE = 64  # handshakes in flight per client process
PING_SECONDS = 15.0  # the stream protocol's client ping (the gateway closes idle clients after 45 s)
PING_STEP_SECONDS = 0.1  # pings are spread over the interval in steps this long
BIG_FRAME = 200  # bytes: deltas are larger, pongs and heartbeats smaller
STRAGGLER_SECONDS = 30.0  # a change not seen this long after the round's last frame is lost


@dataclass
class Row:
    clients: int
    rate: float
    held: int
    p50_ms: float
    p99_ms: float
    lost: int


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the bare baseline server -----------------------------------------------------------------


async def bare_server(port: int, control_port: int) -> None:
    """Subscribers connect to `port` (shared by every bare process); whatever the load generator
    sends to this process's `control_port` goes to this process's subscribers."""
    subscribers: set[websockets.ServerConnection] = set()
    settle_heap()  # the collector settings the gateway workers run with

    async def subscriber(ws: websockets.ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):  # clients leave without a close frame
            async for frame in ws:
                if frame == "sub":
                    subscribers.add(ws)
                    await ws.send("ok")
        subscribers.discard(ws)

    async def publisher(ws: websockets.ServerConnection) -> None:
        async for frame in ws:
            websockets.broadcast(subscribers, frame)

    async with (
        # no protocol pings, as the gateway sends none (its clients ping at the application level)
        websockets.serve(
            subscriber,
            "127.0.0.1",
            port,
            reuse_port=True,
            compression=None,
            backlog=4096,
            ping_interval=None,
        ),
        websockets.serve(publisher, "127.0.0.1", control_port, compression=None, max_size=None),
    ):
        await asyncio.Future()


@contextlib.contextmanager
def bare_processes(count: int) -> Iterator[tuple[int, list[int]]]:
    """`count` bare server processes on one shared port; yields it and their control ports."""
    port = free_port()
    controls = [free_port() for _ in range(count)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "icc.bench_stream", "--bare-server", f"{port},{control}"],
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
        )
        for control in controls
    ]
    try:
        for control in controls:
            wait_for_port("127.0.0.1", control, 30)
        yield port, controls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


# -- the load generator: client processes ------------------------------------------------------


class Client(asyncio.Protocol):
    """One WebSocket connection, spoken at the frame level: a load generator built on a full client
    library spends more time per frame than the servers it measures. Frames are timestamped when
    their bytes arrive and decoded after the round; pings are answered, nothing else is interpreted.
    """

    def __init__(self, owner: ClientWorker) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.frames: list[tuple[float, bytes]] = []
        self.arrived = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()
        self.open = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed during the handshake"))
        self.arrived.set()

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
            self.open.set_result(None)
        start, size, big = 0, len(buffer), False
        while size - start >= 2:
            opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            head = 2
            if length == 126:
                if size - start < 4:
                    break
                length, head = int.from_bytes(buffer[start + 2 : start + 4]), 4
            elif length == 127:
                if size - start < 10:
                    break
                length, head = int.from_bytes(buffer[start + 2 : start + 10]), 10
            if size - start < head + length:
                break
            payload = bytes(buffer[start + head : start + head + length])
            start += head + length
            if opcode in (1, 2):
                self.frames.append((at, payload))
                big = big or length > BIG_FRAME
            elif opcode == 9:
                self.send(payload, opcode=10)
            elif opcode == 8:
                self.close()
        del buffer[:start]
        if big:
            self.owner.last_big = at
        self.arrived.set()

    def send(self, payload: bytes, *, opcode: int = 1) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2)
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8)
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n])
        body = (int.from_bytes(payload) ^ key).to_bytes(n) if n else b""
        self.transport.write(head + mask + body)

    async def next_frame(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.frames:
                if self.closed.done():
                    raise ConnectionError("closed by the server")
                self.arrived.clear()
                await self.arrived.wait()
        return self.frames.pop(0)[1]

    @property
    def held(self) -> bool:
        return not self.closed.done()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def open_client(owner: ClientWorker, port: int, path: str) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(owner), "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert client.transport is not None
    client.transport.write(request.encode())
    await asyncio.wait_for(client.open, 300)  # a server may drop frames sent before its answer
    return client


class ClientWorker:
    """Runs in a load-generator process: holds many connections, answers the coordinator's commands."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.last_big = 0.0
        self.pinger: asyncio.Task[None] | None = None
        self.failures: list[str] = []

    async def connect_icc(self, url: str, token: str, count: int) -> int:
        port = int(url.rsplit(":", 1)[1])
        auth = orjson.dumps({"type": "auth", "token": token})
        subscribe = orjson.dumps({"type": "subscribe", "scope": f"site:{LATENCY_SITE}"})
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def one() -> Client:
            async with gate:
                client = await open_client(self, port, "/v1/stream")
                try:
                    client.send(auth)
                    client.send(subscribe)
                    while orjson.loads(await client.next_frame(300))["type"] != "snapshot":
                        pass
                except BaseException:
                    client.close()
                    raise
                return client

        return await self._connect_all(one, count, ping=True)

    async def connect_bare(self, port: int, count: int) -> int:
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def one() -> Client:
            async with gate:
                client = await open_client(self, port, "/")
                client.send(b"sub")
                if await client.next_frame(300) != b"ok":
                    client.close()
                    raise ConnectionError("the bare server did not confirm the subscription")
                return client

        return await self._connect_all(one, count, ping=False)

    async def _connect_all(self, one: Any, count: int, *, ping: bool) -> int:
        outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        self.clients = [o for o in outcomes if isinstance(o, Client)]
        self.failures = sorted({repr(o)[:200] for o in outcomes if not isinstance(o, Client)})
        if ping:
            self.pinger = asyncio.create_task(self._ping())
        return len(self.clients)

    async def _ping(self) -> None:
        """Every client pings every PING_SECONDS, each at its own phase, as independent screens do:
        all of them at once would be a burst of thousands of messages that real screens never send."""
        ping = orjson.dumps({"type": "ping"})
        steps = int(PING_SECONDS / PING_STEP_SECONDS)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            for step in range(steps):
                for client in self.clients[step::steps]:
                    client.send(ping)
                start += PING_STEP_SECONDS
                await asyncio.sleep(max(0.0, start - loop.time()))

    def clear(self) -> None:
        for client in self.clients:
            client.frames.clear()
        self.last_big = 0.0
        # A full collection walks every connection's objects: a pause of tens of milliseconds in
        # which arriving frames wait in the kernel and are timestamped late, on either server.
        # The connections live until the round ends, so they are moved out of the collector's
        # reach; the frames a round keeps hold no reference cycles.
        settle_heap()

    def held(self) -> int:
        return sum(1 for c in self.clients if c.held)

    def icc_latencies(self, sent: list[Sent]) -> list[float | None]:
        """For every (client, change): ms from the change's 202 to the first ward delta showing it."""
        by_ward: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(sent):
            by_ward[s.ward_id].append(i)
        decoded: dict[bytes, tuple[str, dict[str, str]] | None] = {}
        out: list[float | None] = []
        for client in self.clients:
            hits: list[float | None] = [None] * len(sent)
            for at, frame in client.frames:
                if len(frame) <= BIG_FRAME:
                    continue
                if frame not in decoded:  # every client gets the same bytes: decode each once
                    ward = orjson.loads(frame).get("ward")
                    decoded[frame] = (ward["ward_id"], ward["beds"]) if isinstance(ward, dict) else None
                seen = decoded[frame]
                if seen is None:
                    continue
                ward_id, beds = seen
                for i in by_ward.get(ward_id, ()):
                    s = sent[i]
                    if hits[i] is None and at >= s.sent_at and beds.get(s.bed_id) == s.status:
                        hits[i] = (at - s.accepted_at) * 1000
            out.extend(hits)
        return out

    def bare_latencies(self, sent: dict[int, float]) -> list[float | None]:
        decoded: dict[bytes, int | None] = {}
        out: list[float | None] = []
        for client in self.clients:
            arrivals: dict[int, float] = {}
            for at, frame in client.frames:
                if len(frame) <= BIG_FRAME:
                    continue
                if frame not in decoded:
                    message = orjson.loads(frame)
                    decoded[frame] = message["seq"] if "ward" in message else None
                seq = decoded[frame]
                if seq is not None and seq not in arrivals:
                    arrivals[seq] = at
            out.extend((arrivals[i] - t) * 1000 if i in arrivals else None for i, t in sent.items())
        return out

    async def close(self) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
        for client in self.clients:
            client.close()
        self.clients = []
        gc.unfreeze()


async def _serve_commands(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = ClientWorker()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        if command == "stop":
            await worker.close()
            return
        answer: Any = None
        if command == "connect_icc":
            answer = (await worker.connect_icc(*args), worker.failures)
        elif command == "connect_bare":
            answer = (await worker.connect_bare(*args), worker.failures)
        elif command == "clear":
            worker.clear()
        elif command == "last_big":
            answer = worker.last_big
        elif command == "icc_latencies":
            answer = (worker.held(), worker.icc_latencies(*args))
        elif command == "bare_latencies":
            answer = (worker.held(), worker.bare_latencies(*args))
        elif command == "close":
            await worker.close()
        pipe.send(answer)


def client_process(pipe: Connection) -> None:
    raise_open_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve_commands(pipe))


class ClientPool:
    """Load-generator processes, each holding its share of the connections."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=client_process, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    async def ask(self, command: str, *args: Any, each: list[tuple[Any, ...]] | None = None) -> list[Any]:
        """Send a command to every process (with its own arguments in `each`); gather the answers."""
        for i, pipe in enumerate(self.pipes):
            pipe.send((command, each[i] if each is not None else args))
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in self.pipes)))

    def shares(self, total: int) -> list[int]:
        n = len(self.pipes)
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    async def quiet(self, seconds: float, timeout: float = STRAGGLER_SECONDS) -> None:
        """Wait for a first delta, then until no client has received one for `seconds` (or `timeout`)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            last = max(await self.ask("last_big"))
            if last and time.perf_counter() - last > seconds:
                return
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", ()))
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def per_change(answers: list[tuple[int, list[float | None]]], per_client: int) -> list[list[float]]:
    """Each change's latencies over the clients that got it (each process answers client by client)."""
    changes: list[list[float]] = [[] for _ in range(per_client)]
    for _, latencies in answers:
        for n, latency in enumerate(latencies):
            if latency is not None:
                changes[n % per_client].append(latency)
    return changes


def print_per_change(label: str, answers: list[tuple[int, list[float | None]]], per_client: int) -> None:
    """First, median and last arrival of every change: an upstream delay moves all three, the
    fan-out's spread is the distance from first to last."""
    for n, got in enumerate(per_change(answers, per_client)):
        if got:
            first, median, last = min(got), percentile(got, 50), max(got)
            print(f"  {label} change {n:>3}: first {first:7.1f} median {median:7.1f} last {last:7.1f} ms")


def _row(clients: int, rate: float, answers: list[tuple[int, list[float | None]]], per_client: int) -> Row:
    held = sum(h for h, _ in answers)
    samples = [a for _, latencies in answers for a in latencies]
    got = [a for a in samples if a is not None]
    lost = len(samples) - len(got) + (clients - len(samples) // max(per_client, 1)) * per_client
    if not got:
        return Row(clients, rate, held, float("nan"), float("nan"), lost)
    return Row(clients, rate, held, percentile(got, 50), percentile(got, 99), lost)


async def _connect_pool(pool: ClientPool, command: str, clients: int, args: tuple[Any, ...]) -> int:
    started = time.perf_counter()
    answers = await pool.ask(command, each=[(*args, share) for share in pool.shares(clients)])
    connected = sum(n for n, _ in answers)
    failures = sorted({f for _, fs in answers for f in fs})
    progress(
        f"  {connected:,} of {clients:,} connected in {time.perf_counter() - started:.0f} s"
        + (f"; failures: {failures[:3]}" if failures else "")
    )
    return connected


# -- rounds ------------------------------------------------------------------------------------


def _silence(cfg: Config) -> float:
    """How long no delta must arrive for a round to be over: longer than between two changes."""
    return max(1.0, 2.5 / cfg.latency_rate)


async def baseline_round(
    pool: ClientPool,
    port: int,
    controls: list[int],
    clients: int,
    templates: list[dict[str, Any]],
    cfg: Config,
) -> Row:
    await _connect_pool(pool, "connect_bare", clients, (port,))
    sent: dict[int, float] = {}
    publishers = [
        await websockets.connect(f"ws://127.0.0.1:{c}", compression=None, proxy=None) for c in controls
    ]
    try:
        await pool.ask("clear")
        start = time.perf_counter()
        for i in range(int(cfg.latency_rate * cfg.latency_seconds)):
            await asyncio.sleep(max(0.0, start + i / cfg.latency_rate - time.perf_counter()))
            frames = [orjson.dumps({**t, "seq": i}).decode() for t in templates]
            sent[i] = time.perf_counter()
            for publisher in publishers:  # every process, as every gateway worker reads every change
                for frame in frames:
                    await publisher.send(frame)
        await pool.quiet(_silence(cfg))
        answers = await pool.ask("bare_latencies", sent)
        if cfg.per_change:
            print_per_change("bare", answers, len(sent))
    finally:
        for publisher in publishers:
            await publisher.close()
        await pool.ask("close")
    return _row(clients, cfg.latency_rate, answers, len(sent))


async def sample_frames(
    gateway_url: str, token: str, url: str, secret: str, plan: SiteBedPlan
) -> list[dict[str, Any]]:
    """The frames the gateway sends a site's watchers for one bed change: a ward delta and (when the
    site's figures change) a summary delta; the baseline sends frames of the same size."""
    stream_url = gateway_url.replace("http", "ws", 1) + "/v1/stream"
    async with websockets.connect(stream_url, compression=None, proxy=None, max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.send(orjson.dumps({"type": "subscribe", "scope": f"site:{LATENCY_SITE}"}).decode())
        async with asyncio.timeout(60):
            while orjson.loads(await ws.recv())["type"] != "snapshot":
                pass
        async with httpx.AsyncClient(timeout=30) as client:
            await post_change(client, url, secret, *plan.next())
        frames: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while len(frames) < 2:
                    message: dict[str, Any] = orjson.loads(await ws.recv())
                    if message.get("type") == "delta":
                        kind = "ward" if "ward" in message else "summary" if "summary" in message else ""
                        if kind and kind not in frames:
                            frames[kind] = message
    if "ward" not in frames:
        raise RuntimeError("the gateway sent no ward delta for a bed change")
    return [frames[k] for k in ("ward", "summary") if k in frames]


async def icc_round(
    pool: ClientPool,
    gateway_url: str,
    ingest_url: str,
    secret: str,
    token: str,
    plan: SiteBedPlan,
    clients: int,
    cfg: Config,
) -> Row:
    await _connect_pool(pool, "connect_icc", clients, (gateway_url, token))
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await post_change(client, ingest_url, secret, *plan.next())  # the feed is live
            await pool.quiet(_silence(cfg))
            await pool.ask("clear")
            sent = await send_steadily(client, ingest_url, secret, plan, cfg)
            await pool.quiet(_silence(cfg))
        answers = await pool.ask("icc_latencies", sent)
        if cfg.per_change:
            print_per_change("ICC", answers, len(sent))
    finally:
        await pool.ask("close")
    return _row(clients, cfg.latency_rate, answers, len(sent))


def _numbers(text: str, kind: type) -> list[Any]:
    return [kind(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="python -m icc.bench_stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", default="100,1000,10000", help="comma-separated client counts")
    parser.add_argument(
        "--rate",
        default="10,10,1",
        help="bed changes per second (steady, open-loop): one for every count, or one per count",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured round")
    parser.add_argument(
        "--server-processes",
        type=int,
        default=cpus,
        help=f"gateway workers, and bare server processes (default: the CPU count, {cpus})",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=cpus,
        help=f"load-generator processes holding the clients (default: the CPU count, {cpus})",
    )
    parser.add_argument(
        "--per-change",
        action="store_true",
        help="also print each change's first, median and last arrival (where a slow round's time went)",
    )
    parser.add_argument("--bare-server", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_open_file_limit()
    if args.bare_server:
        port, control = _numbers(args.bare_server, int)
        with contextlib.suppress(KeyboardInterrupt):
            run(bare_server(port, control))
        return 0
    counts = _numbers(args.clients, int)
    rates = _numbers(args.rate, float)
    if len(rates) == 1:
        rates *= len(counts)
    if len(rates) != len(counts):
        parser.error("--rate takes one rate, or one per client count")
    cfgs = [
        replace(Config(), latency_rate=rate, latency_seconds=args.seconds, per_change=args.per_change)
        for rate in rates
    ]
    started = time.monotonic()
    icc_rows: list[Row] = []
    bare_rows: list[Row] = []
    pool = ClientPool(args.client_processes)
    try:
        with environment() as env:
            token = mint_token(
                env.secrets.jwt_secret,
                subject="bench-wall",
                role=Role.wall_display,
                scopes=[f"site:{LATENCY_SITE}"],
            )
            secret = env.secrets.webhook_secrets[WEBHOOK_SOURCE]
            progress(f"starting broker, ingest, command-centre and gateway ({args.server_processes} workers)")
            services = ("ingest", "command-centre", "gateway")
            with (
                running_broker(env, "stream") as broker,
                running_stack(
                    env, "bench_stream", broker, services, cfgs[0], gateway_workers=args.server_processes
                ) as stack,
            ):
                plan = SiteBedPlan(env.org, LATENCY_SITE)
                ingest_url = stack.url_of("ingest") + WEBHOOK_PATH
                gateway_url = stack.url_of("gateway")
                templates = run(sample_frames(gateway_url, token, ingest_url, secret, plan))
                for clients, cfg in zip(counts, cfgs, strict=True):
                    progress(f"ICC: {clients:,} clients, {cfg.latency_rate:g} changes/s")
                    row = run(icc_round(pool, gateway_url, ingest_url, secret, token, plan, clients, cfg))
                    progress(
                        f"ICC {clients} clients: held {row.held} p50 {row.p50_ms:.1f} ms "
                        f"p99 {row.p99_ms:.1f} ms lost {row.lost}"
                    )
                    icc_rows.append(row)
            with bare_processes(args.server_processes) as (port, controls):
                for clients, cfg in zip(counts, cfgs, strict=True):
                    progress(f"bare: {clients:,} clients, {cfg.latency_rate:g} changes/s")
                    row = run(baseline_round(pool, port, controls, clients, templates, cfg))
                    progress(
                        f"bare {clients} clients: held {row.held} p50 {row.p50_ms:.1f} ms "
                        f"p99 {row.p99_ms:.1f} ms lost {row.lost}"
                    )
                    bare_rows.append(row)
    finally:
        pool.stop()
    sizes = "+".join(f"{len(orjson.dumps(t))} B" for t in templates)
    print()
    print(
        f"{args.seconds:g} s per count; frames per change {sizes}; {args.server_processes} gateway workers "
        f"and as many bare processes; {args.client_processes} client processes; {cpus} CPUs shared by all"
    )
    print(
        f"{'clients':>8} {'rate/s':>6} {'held':>6} {'ICC p50':>9} {'ICC p99':>9} {'lost':>6} "
        f"{'bare held':>9} {'bare p50':>9} {'bare p99':>9} {'lost':>6} {'p99 ratio':>9}"
    )
    for icc, bare in zip(icc_rows, bare_rows, strict=True):
        ratio = icc.p99_ms / bare.p99_ms if bare.p99_ms else float("nan")
        print(
            f"{icc.clients:>8} {icc.rate:>6g} {icc.held:>6} {icc.p50_ms:>7.1f}ms {icc.p99_ms:>7.1f}ms "
            f"{icc.lost:>6} {bare.held:>9} {bare.p50_ms:>7.1f}ms {bare.p99_ms:>7.1f}ms {bare.lost:>6} "
            f"{ratio:>8.1f}x"
        )
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
