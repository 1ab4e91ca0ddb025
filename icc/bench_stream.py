"""Stream benchmark: WebSocket clients held and ingest-202-to-client latency through the gateway,
against a bare `websockets.broadcast` server sending the same frames to the same number of clients
in the same run.

    python -m icc.bench_stream [--clients 100,1000] [--rate 10] [--seconds 10]

ICC: the whole stack (ingest, command centre, gateway) as `icc up` starts it; N clients subscribe
to one site; signed bed changes are posted open-loop at `--rate` per second; latency runs from the
webhook's 202 to the delta's arrival at each client. Baseline: a bare server in its own process
that broadcasts every frame it is given to every other connection with `websockets.broadcast`;
the load generator hands it, at the same rate, frames of the same size as the gateway's deltas
(taken from this run), and latency runs from the hand-over to the arrival at each client. The
baseline does no ingest, no Kafka and no state, so it is the floor of the fan-out alone.
Targets (reported, never asserted): p99 < 50 ms with 100 clients, < 250 ms with 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

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

WEBHOOK_PATH = "/v1/bed-events"
WEBHOOK_SOURCE = "bedmgmt"


@dataclass
class Row:
    clients: int
    held: int
    p50_ms: float
    p99_ms: float
    lost: int


# -- the bare baseline server -----------------------------------------------------------------


async def bare_server(port: int) -> None:
    """Connections that send `sub` receive every frame any other connection sends."""
    subscribers: set[websockets.ServerConnection] = set()

    async def handler(ws: websockets.ServerConnection) -> None:
        async for frame in ws:
            if frame == "sub":
                subscribers.add(ws)
                await ws.send("ok")
            else:
                websockets.broadcast(subscribers, frame)
        subscribers.discard(ws)

    async with websockets.serve(handler, "127.0.0.1", port, max_queue=None):
        await asyncio.Future()


@contextlib.contextmanager
def bare_process() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "icc.bench_stream", "--bare-server", str(port)],
        preexec_fn=die_with_parent,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class BareClient:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, bytes | str]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.ws:
                self.frames.append((time.perf_counter(), frame))

    @property
    def arrivals(self) -> dict[int, float]:
        return {orjson.loads(frame)["seq"]: at for at, frame in self.frames}


async def baseline_round(port: int, clients: int, template: dict[str, object], cfg: Config) -> Row:
    async def subscriber() -> BareClient:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}", open_timeout=60, max_size=None)
        await ws.send("sub")
        assert await ws.recv() == "ok"
        return BareClient(ws)

    subscribers = await asyncio.gather(*(subscriber() for _ in range(clients)))
    sent: dict[int, float] = {}
    async with websockets.connect(f"ws://127.0.0.1:{port}") as publisher:
        start = time.perf_counter()
        for i in range(int(cfg.latency_rate * cfg.latency_seconds)):
            await asyncio.sleep(max(0.0, start + i / cfg.latency_rate - time.perf_counter()))
            frame = orjson.dumps({**template, "seq": i}).decode()
            sent[i] = time.perf_counter()
            await publisher.send(frame)
        deadline = time.perf_counter() + 15
        # a bounded wait for stragglers after the round, as bench.wait_until does
        while time.perf_counter() < deadline and any(len(s.frames) < len(sent) for s in subscribers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    arrivals = [s.arrivals for s in subscribers]
    samples = [(a[i] - t) * 1000 for a in arrivals for i, t in sent.items() if i in a]
    lost = len(sent) * clients - len(samples)
    for s in subscribers:
        await s.ws.close()
        s.reader.cancel()
    return Row(clients, clients, percentile(samples, 50), percentile(samples, 99), lost)


# -- ICC ---------------------------------------------------------------------------------------


async def sample_frame(
    gateway_url: str, token: str, url: str, secret: str, plan: SiteBedPlan
) -> dict[str, object]:
    """One ward delta as the gateway sends it, for the baseline to send the same size of frame."""
    async with websockets.connect(gateway_url.replace("http", "ws", 1) + "/v1/stream") as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.send(orjson.dumps({"type": "subscribe", "scope": f"site:{LATENCY_SITE}"}).decode())
        async with httpx.AsyncClient(timeout=30) as client:
            await post_change(client, url, secret, *plan.next())
        async with asyncio.timeout(60):
            while True:
                message: dict[str, object] = orjson.loads(await ws.recv())
                if message.get("type") == "delta" and "ward" in message:
                    return message


class LightWatcher:
    """A stream client that only timestamps frames while measuring and decodes them afterwards,
    so the load generator's own decoding does not stand in the way of what is measured."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, bytes | str]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, gateway_url: str, token: str) -> LightWatcher:
        ws = await websockets.connect(gateway_url.replace("http", "ws", 1) + "/v1/stream", open_timeout=120)
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.send(orjson.dumps({"type": "subscribe", "scope": f"site:{LATENCY_SITE}"}).decode())
        async with asyncio.timeout(120):
            while orjson.loads(await ws.recv())["type"] != "snapshot":
                pass
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.ws:
                self.frames.append((time.perf_counter(), frame))

    def arrivals(self, sent: list[Sent]) -> list[float | None]:
        seen: list[tuple[float, str, dict[str, str]]] = []
        for arrived, frame in self.frames:
            message = orjson.loads(frame)
            ward = message.get("ward")
            if isinstance(ward, dict):
                seen.append((arrived, ward["ward_id"], ward["beds"]))
        out: list[float | None] = []
        for s in sent:
            hit = next(
                (
                    a
                    for a, w, beds in seen
                    if w == s.ward_id and a >= s.sent_at and beds.get(s.bed_id) == s.status
                ),
                None,
            )
            out.append(None if hit is None else (hit - s.accepted_at) * 1000)
        return out

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def quiet(watchers: list[LightWatcher], seconds: float = 1.0, timeout: float = 15.0) -> None:
    """Wait until no client has received anything for `seconds` (or `timeout`)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        last = max((w.frames[-1][0] for w in watchers if w.frames), default=0.0)
        if time.perf_counter() - last > seconds:
            return
        await asyncio.sleep(0.25)


async def icc_round(
    gateway_url: str, ingest_url: str, secret: str, token: str, plan: SiteBedPlan, clients: int, cfg: Config
) -> Row:
    outcomes = await asyncio.gather(
        *(LightWatcher.connect(gateway_url, token) for _ in range(clients)), return_exceptions=True
    )
    watchers = [o for o in outcomes if isinstance(o, LightWatcher)]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await post_change(client, ingest_url, secret, *plan.next())  # the feed is live
            await quiet(watchers)
            for w in watchers:
                w.frames.clear()
            sent = await send_steadily(client, ingest_url, secret, plan, cfg)
            await quiet(watchers)
        held = sum(1 for w in watchers if not w.reader.done())
        samples = [a for w in watchers for a in w.arrivals(sent)]
    finally:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
    got = [a for a in samples if a is not None]
    lost = len(samples) - len(got) + (clients - len(watchers)) * len(sent)
    return Row(clients, held, percentile(got, 50), percentile(got, 99), lost)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icc.bench_stream", description=__doc__)
    parser.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    parser.add_argument("--rate", type=float, default=10.0, help="bed changes per second (steady, open-loop)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured round")
    parser.add_argument("--bare-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        with contextlib.suppress(KeyboardInterrupt):
            run(bare_server(args.bare_server))
        return 0
    counts = [int(c) for c in args.clients.split(",")]
    cfg = replace(Config(), latency_rate=args.rate, latency_seconds=args.seconds)
    started = time.monotonic()
    icc_rows: list[Row] = []
    bare_rows: list[Row] = []
    with environment() as env:
        token = mint_token(
            env.secrets.jwt_secret,
            subject="bench-wall",
            role=Role.wall_display,
            scopes=[f"site:{LATENCY_SITE}"],
        )
        secret = env.secrets.webhook_secrets[WEBHOOK_SOURCE]
        progress("starting broker, ingest, command-centre and gateway")
        with (
            running_broker(env, "stream") as broker,
            running_stack(env, "bench_stream", broker, ("ingest", "command-centre", "gateway"), cfg) as stack,
        ):
            plan = SiteBedPlan(env.org, LATENCY_SITE)
            ingest_url = stack.url_of("ingest") + WEBHOOK_PATH
            template = run(sample_frame(stack.url_of("gateway"), token, ingest_url, secret, plan))
            for clients in counts:
                row = asyncio.run(
                    icc_round(stack.url_of("gateway"), ingest_url, secret, token, plan, clients, cfg)
                )
                progress(
                    f"ICC {clients} clients: p50 {row.p50_ms:.1f} ms p99 {row.p99_ms:.1f} ms lost {row.lost}"
                )
                icc_rows.append(row)
        with bare_process() as port:
            for clients in counts:
                row = run(baseline_round(port, clients, template, cfg))
                progress(
                    f"bare {clients} clients: p50 {row.p50_ms:.1f} ms p99 {row.p99_ms:.1f} ms lost {row.lost}"
                )
                bare_rows.append(row)
    frame_bytes = len(orjson.dumps(template))
    print()
    print(
        f"steady rate {cfg.latency_rate:g} changes/s for {cfg.latency_seconds:g} s per count; "
        f"delta frame ~{frame_bytes} B; {os.cpu_count()} CPUs shared by load generator and servers"
    )
    print(
        f"{'clients':>8} {'held':>6} {'ICC p50':>9} {'ICC p99':>9} "
        f"{'bare p50':>9} {'bare p99':>9} {'p99 ratio':>9} {'lost':>6}"
    )
    for icc, bare in zip(icc_rows, bare_rows, strict=True):
        ratio = icc.p99_ms / bare.p99_ms if bare.p99_ms else float("nan")
        print(
            f"{icc.clients:>8} {icc.held:>6} {icc.p50_ms:>7.1f}ms {icc.p99_ms:>7.1f}ms "
            f"{bare.p50_ms:>7.1f}ms {bare.p99_ms:>7.1f}ms {ratio:>8.1f}x {icc.lost:>6}"
        )
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
