"""HL7 v2 ingest benchmark: `python -m icc.bench_hl7` (about a minute).

Measured in one run, on embedded PostgreSQL and broker, with the load generator on the same machine:

1. a bare FastAPI endpoint that reads the body and answers 202 (the baseline);
2. single ADT messages posted to `POST /v1/pas/hl7v2`, each signed, parsed, mapped, committed and
   acknowledged (messages/s, and the ratio to the baseline);
3. HL7 batches (`BHS … BTS`, 100 messages each): events committed per second;
4. parsing alone: python-hl7 on the whole message, the same with ICC's parse plan (`_Plan`), and
   ICC's `read_message` (the projection, parsed with that plan, read into a typed message).

The client is a small keep-alive HTTP/1.1 client on asyncio streams, so it costs little next to the
servers; figures still depend on the machine, which is why the baseline is measured alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

from icc.access_log import uvicorn_cli_options
from icc.embedded import Broker, free_port, start_postgres, stop_postgres, wait_for_port
from icc.stack import Stack
from shared.auth import SOURCE_HEADER, sign_webhook
from shared.secrets_store import load_or_create
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
WARDS = [("AMU", "B1"), ("WD10", "B2"), ("WD12", "B3"), ("WD20", "B1"), ("STR", "B2")]


def bare_app() -> FastAPI:
    """The baseline: FastAPI reading a raw body and answering 202."""
    app = FastAPI()

    @app.post("/bare")
    async def bare(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"accepted"}', status_code=202, media_type="application/json")

    return app


def adt_message(n: int) -> str:
    """A realistic ADT (A01/A02/A08 in turn) with its own control id, visit and bed."""
    trigger = ("A01", "A02", "A08")[n % 3]
    ward, bay = WARDS[n % len(WARDS)]
    bed = f"{ward}^{bay}^{n % 6 + 1}^RXN01"
    return "\r".join(
        [
            f"MSH|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||ADT^{trigger}^ADT_A01|B{n:012d}|P|2.4|||AL|NE|GBR",
            f"EVN|{trigger}|20250203140500|||C1234567^WHO^DOCTOR|20250203140000",
            f"PID|1||{9000000000 + n}^^^NHS^NH~K{n:07d}^^^RXN01^MR||SURNAME^GIVEN^^^MR||19450212|M|||"
            "1 STREET^^TOWN^^NT1 1AA^GBR^H||01234 567890^PRN^PH",
            "PD1|||SURGERY^^B12345|G1234567^GP^NAME^^^DR",
            f"PV1|1|I|{bed}|21||AMU^B1^1^RXN01|C1234567^WHO^DOCTOR^^^DR|||300||||19|||C1234567^WHO^DOCTOR"
            f"|01|V{n:09d}^^^RXN01^VN|||||||||||||||||||||||||20250203140000",
            "PV2|||^Chest pain",
            "AL1|1|DA|^PENICILLIN",
            "ZU1|local|data",
        ]
    )


class Http:
    """Keep-alive HTTP/1.1 POSTs over one connection (enough of the protocol for these servers)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(
    host: str, port: int, path: str, bodies: list[bytes], headers: Any, *, seconds: float, workers: int
) -> tuple[float, int]:
    """Post `bodies` in turn from `workers` connections for `seconds`; return (successes/s, failures).

    Only answers under 300 count towards the rate: a refusal (a 429, say) is not throughput.
    """
    counter = itertools.count()
    done = failures = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failures
        client = Http(host, port)
        try:
            while time.perf_counter() < deadline:
                body = bodies[next(counter) % len(bodies)]
                status, _ = await client.post(path, body, headers(body))
                done += 1
                failures += status >= 300
        finally:
            await client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return (done - failures) / (time.perf_counter() - start), failures


def parse_rates(seconds: float = 2.0) -> tuple[float, float, float]:
    import hl7

    from services.ingest.hl7_er7 import _parse, read_message

    message = adt_message(1)

    def rate(fn: Any) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            count += 1
        return count / (time.perf_counter() - start)

    return (
        rate(lambda: hl7.parse(message)),
        rate(lambda: _parse(message)),
        rate(lambda: read_message(message)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icc.bench_hl7", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each HTTP measurement")
    parser.add_argument("--workers", type=int, default=32, help="concurrent connections")
    args = parser.parse_args(argv)

    full, planned, projected = parse_rates()
    print(f"parse only     python-hl7 on the whole message   {full:8.0f} msg/s")
    print(f"parse only     the same with ICC's parse plan    {planned:8.0f} msg/s")
    print(f"parse only     ICC read_message (projection)     {projected:8.0f} msg/s")

    with tempfile.TemporaryDirectory(prefix="icc-bench-hl7-") as tmp:
        data = Path(tmp)
        database_url = start_postgres(data)
        broker = Broker(free_port(), data / "broker.log").start()
        settings = Settings(
            ICC_DATA_DIR=data / "data",
            DATABASE_URL=database_url,
            KAFKA_BOOTSTRAP=broker.bootstrap,
            ICC_ORG_FILE=ROOT / "deploy/org/sample-icb.yaml",
            ICC_LOCATION_MAP_FILE=ROOT / "deploy/org/location-map.yaml",
            ICC_SECRETS_FILE=data / "secrets.json",
            ICC_INGEST_PORT=free_port(),
            ICC_COMMAND_CENTRE_PORT=free_port(),
            ICC_GATEWAY_PORT=free_port(),
            # one source sends the whole load: the per-source rate limit would measure itself
            ICC_RATE_LIMIT_PER_SECOND=0,
        )
        secret = load_or_create(settings.resolved_secrets_file).webhook_secrets["pas"]
        stack = Stack(settings)
        bare_port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "icc.bench_hl7:bare_app",
                "--factory",
                "--port",
                str(bare_port),
                # the access log as the ingest service keeps it (ICC_ACCESS_LOG)
                *uvicorn_cli_options(settings.access_log, data),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            stack.start_infrastructure()
            stack.start_service("ingest")
            stack.wait_ready("ingest")
            wait_for_port("127.0.0.1", bare_port, 30)
            rates = asyncio.run(_http(settings, bare_port, secret, args.seconds, args.workers))
        finally:
            bare.terminate()
            bare.wait(10)
            stack.stop()
            broker.stop()
            stop_postgres(data)
    (bare_rate, _), (hl7_rate, hl7_failed), (batch_events, batch_failed) = rates
    print(f"HTTP baseline  bare FastAPI POST → 202          {bare_rate:8.0f} req/s")
    print(
        f"HL7 single     POST /v1/pas/hl7v2 → ACK AA       {hl7_rate:8.0f} msg/s   "
        f"({hl7_rate / bare_rate:.2f} × baseline, {hl7_failed} not AA)"
    )
    print(f"HL7 batch      100 per POST, committed           {batch_events:8.0f} events/s", end=" ")
    print(f"({batch_failed} batches not all AA)")
    return 0


async def _http(
    settings: Settings, bare_port: int, secret: str, seconds: float, workers: int
) -> list[tuple[float, int]]:
    host = settings.host

    def signed(body: bytes) -> dict[str, str]:
        return {
            "content-type": "x-application/hl7-v2+er7",
            SOURCE_HEADER: "pas",
            **sign_webhook(secret, body),
        }

    messages = [adt_message(n).encode() for n in range(200_000)]
    batches = [
        b"BHS|^~\\&|PAS|RXN01|ICC|QXN|20250203140500\r"
        + b"\r".join(adt_message(300_000 + n * 100 + i).encode() for i in range(100))
        + b"\rBTS|100\r"
        for n in range(2000)
    ]
    # warm up both servers (connections, imports, the first group commits)
    await load(host, bare_port, "/bare", messages[:1], lambda b: {}, seconds=1, workers=4)
    await load(host, settings.ingest_port, "/v1/pas/hl7v2", messages[-500:], signed, seconds=1, workers=4)
    bare = await load(host, bare_port, "/bare", messages, lambda b: {}, seconds=seconds, workers=workers)
    single = await load(
        host, settings.ingest_port, "/v1/pas/hl7v2", messages, signed, seconds=seconds, workers=workers
    )
    batch_rate, batch_failed = await load(
        host, settings.ingest_port, "/v1/pas/hl7v2", batches, signed, seconds=seconds, workers=4
    )
    return [bare, single, (batch_rate * 100, batch_failed)]


if __name__ == "__main__":
    sys.exit(main())
