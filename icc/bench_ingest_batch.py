"""Batched ingest throughput: NDJSON and FHIR Bundle events committed per second, on one ingest worker.

    python -m icc.bench_ingest_batch [--seconds 10]

Starts its own embedded PostgreSQL and broker (free ports, a temporary data folder it removes) and
one ingest process as `icc up` does (one uvicorn worker, with its outbox relay publishing to the
broker as it would in production). Then, in the same run, for a fixed time each:

1. baseline: the single-event JSON webhook `POST /v1/bed-events`, many requests in flight;
2. NDJSON: `POST /v1/ed-events`, 1,000 ED milestones per request;
3. FHIR: `POST /v1/pas/fhir`, transaction Bundles of 1,000 inpatient Encounters.

An event counts when ingest answered for it: ingest answers only after the commit. The counts are
checked against the outbox at the end. The load generator is a minimal keep-alive HTTP/1.1 client
with signed bodies prepared before the clock starts, so that the machine's two cores go to ingest
as far as possible; it still shares them (with PostgreSQL and the broker too), which is why the
batched rates are printed as ratios of the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from icc.embedded import free_port
from icc.stack import Stack
from shared.auth import SOURCE_HEADER, sign_webhook
from shared.organisation import load_organisation
from shared.outbox import RELAY_LOCK
from shared.secrets_store import Secrets, load_or_create
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TARGET_BATCHED = 20_000


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    requests: int
    failures: int
    ingest_cpu: float = 0.0  # CPU seconds the ingest process used meanwhile

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Events per CPU-second of the ingest worker: what one core could commit, whatever else ran."""
        return self.events / self.ingest_cpu if self.ingest_cpu else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """One keep-alive HTTP/1.1 connection sending prepared requests and reading whole answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=8 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed(secrets: Secrets, source: str, content_type: str, body: bytes) -> dict[str, str]:
    return {
        "content-type": content_type,
        SOURCE_HEADER: source,
        **sign_webhook(secrets.webhook_secrets[source], body),
    }


async def drive(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    seconds: float,
    count: Callable[[int, bytes], int],
    name: str,
    pid: int,
) -> Phase:
    """Send prepared requests from `concurrency` connections until the time is up; count events answered."""
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    events = sent = failures = 0
    next_request = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal events, sent, failures, next_request
        while loop.time() < deadline and next_request < len(requests):
            request = requests[next_request]
            next_request += 1
            status, body = await conn.send(request)
            sent += 1
            counted = count(status, body)
            if counted == 0:
                failures += 1
            events += counted

    started, cpu_before = loop.time(), cpu_seconds(pid)
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed, cpu = loop.time() - started, cpu_seconds(pid) - cpu_before
    for c in connections:
        c.close()
    if next_request >= len(requests):
        print(f"  ({name}: ran out of prepared requests; raise the request count for a longer run)")
    return Phase(name, events, elapsed, sent, failures, cpu)


def single_events(org_beds: list[str], n: int, start: datetime) -> list[bytes]:
    bodies = []
    for i in range(n):
        bed = org_beds[i % len(org_beds)]
        site, ward = bed.split("-")[0], "-".join(bed.split("-")[:2])
        at = (start + timedelta(milliseconds=i)).isoformat()
        status = ("occupied", "unoccupied", "housekeeping")[i % 3]
        bodies.append(
            orjson.dumps(
                {"site_id": site, "ward_id": ward, "bed_id": bed, "status": status, "occurred_at": at}
            )
        )
    return bodies


def ndjson_batches(batches: int, per_batch: int, start: datetime) -> list[bytes]:
    milestones = ("seen_for_treatment", "clinically_ready_to_proceed", "conclusion")
    out = []
    for b in range(batches):
        lines = []
        for i in range(per_batch):
            n = b * per_batch + i
            lines.append(
                orjson.dumps(
                    {
                        "milestone": milestones[n % 3],
                        "site_id": ("RXN01", "RXN02")[n % 2],
                        "attendance_id": f"A{n:09d}",
                        "occurred_at": (start + timedelta(milliseconds=n)).isoformat(),
                        "patient": {"mrn": f"M{n:08d}"},
                    }
                )
            )
        out.append(b"\n".join(lines) + b"\n")
    return out


def fhir_bundles(batches: int, per_batch: int, beds: list[str], start: datetime) -> list[bytes]:
    out = []
    run = uuid.uuid4().hex[:8]
    for b in range(batches):
        entries = []
        for i in range(per_batch):
            n = b * per_batch + i
            bed = beds[n % len(beds)]
            site, ward_code, room, number = bed.split("-")
            resource = {
                "resourceType": "Encounter",
                "id": f"bench-{run}-{n}",
                "meta": {"versionId": "1", "lastUpdated": (start + timedelta(milliseconds=n)).isoformat()},
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "identifier": [{"system": "https://trust.example/visit", "value": f"V{n:09d}"}],
                "subject": {"identifier": {"system": "https://trust.example/mrn", "value": f"M{n:08d}"}},
                "period": {"start": start.isoformat()},
                "location": [
                    {
                        "location": {"identifier": {"value": f"{ward_code}^{room}^{number}^{site}"}},
                        "status": "active",
                    }
                ],
            }
            entries.append(
                {"resource": resource, "request": {"method": "PUT", "url": f"Encounter/{resource['id']}"}}
            )
        out.append(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    return out


def count_single(status: int, body: bytes) -> int:
    return 1 if status == 202 else 0


def count_ndjson(status: int, body: bytes) -> int:
    return int(orjson.loads(body).get("accepted", 0)) if status == 202 else 0


def count_fhir(status: int, body: bytes) -> int:
    if status != 200:
        return 0
    answer: dict[str, Any] = orjson.loads(body)
    return sum(1 for e in answer.get("entry", []) if e["response"]["status"] == "200 OK")


async def measure(stack: Stack, secrets: Secrets, seconds: float) -> list[Phase]:
    host, port = stack.settings.host, stack.settings.ingest_port
    pid = stack.processes["ingest"].pid
    org = load_organisation(stack.settings.org_file)
    beds = [b for b in org.beds if "-ESC-" not in b]
    start = datetime.now(UTC)
    per_batch = 1000

    def prepare(path: str, source: str, content_type: str, bodies: list[bytes]) -> list[bytes]:
        return [http_request(host, port, path, b, signed(secrets, source, content_type, b)) for b in bodies]

    phases = []
    # a short warm-up of each path, not counted
    for path, source, ctype, bodies in (
        (
            "/v1/bed-events",
            "bedmgmt",
            "application/json",
            single_events(beds, 200, start - timedelta(days=1)),
        ),
        ("/v1/ed-events", "ed", "application/x-ndjson", ndjson_batches(2, 200, start - timedelta(days=1))),
        (
            "/v1/pas/fhir",
            "pas",
            "application/fhir+json",
            fhir_bundles(2, 200, beds, start - timedelta(days=1)),
        ),
    ):
        await drive(
            host,
            port,
            prepare(path, source, ctype, bodies),
            concurrency=2,
            seconds=30,
            count=count_single,
            name="warm-up",
            pid=pid,
        )

    print("baseline: single-event JSON webhook …", flush=True)
    requests = prepare(
        "/v1/bed-events", "bedmgmt", "application/json", single_events(beds, int(seconds * 6000), start)
    )
    phases.append(
        await drive(
            host,
            port,
            requests,
            concurrency=64,
            seconds=seconds,
            count=count_single,
            name="single JSON",
            pid=pid,
        )
    )
    print("NDJSON batches …", flush=True)
    requests = prepare(
        "/v1/ed-events", "ed", "application/x-ndjson", ndjson_batches(int(seconds * 40), per_batch, start)
    )
    phases.append(
        await drive(
            host, port, requests, concurrency=4, seconds=seconds, count=count_ndjson, name="NDJSON", pid=pid
        )
    )
    print("FHIR Bundles …", flush=True)
    requests = prepare(
        "/v1/pas/fhir",
        "pas",
        "application/fhir+json",
        fhir_bundles(int(seconds * 30), per_batch, beds, start),
    )
    phases.append(
        await drive(
            host,
            port,
            requests,
            concurrency=4,
            seconds=seconds,
            count=count_fhir,
            name="FHIR Bundle",
            pid=pid,
        )
    )
    return phases


def report(phases: list[Phase], outbox_rows: int) -> None:
    baseline = phases[0]
    print()
    print(
        f"{'interface':<13}{'events':>9}{'s':>6}{'events/s':>10}{'×base':>7}"
        f"{'ingest CPU s':>13}{'events/CPU-s':>14}{'×base':>7}{'failed':>8}"
    )
    for p in phases:
        ratio = p.rate / baseline.rate if baseline.rate else 0.0
        cpu_ratio = p.per_cpu_second / baseline.per_cpu_second if baseline.per_cpu_second else 0.0
        print(
            f"{p.name:<13}{p.events:>9}{p.seconds:>6.1f}{p.rate:>10.0f}{ratio:>7.2f}"
            f"{p.ingest_cpu:>13.1f}{p.per_cpu_second:>14.0f}{cpu_ratio:>7.2f}{p.failures:>8}"
        )
    counted = sum(p.events for p in phases)
    print(f"\noutbox rows after the run: {outbox_rows} (answered as committed: {counted}, plus the warm-up)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for p in phases[1:]:
        verdict = "meets" if p.rate >= TARGET_BATCHED else "below"
        print(
            f"{p.name}: {p.rate:,.0f} events/s committed ({verdict} the {TARGET_BATCHED:,}/s target); "
            f"{p.per_cpu_second:,.0f} per CPU-second of the ingest worker"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m icc.bench_ingest_batch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per interface")
    parser.add_argument(
        "--relay-elsewhere",
        action="store_true",
        help="hold the relay election so that ingest does not publish (as when command-centre relays)",
    )
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="icc-bench-ingest-"))
    settings = Settings(
        ICC_DATA_DIR=data,
        ICC_ORG_FILE=ROOT / "deploy" / "org" / "sample-icb.yaml",
        ICC_SECRETS_FILE=data / "secrets.json",
        ICC_INGEST_PORT=free_port(),
        ICC_COMMAND_CENTRE_PORT=free_port(),
        ICC_GATEWAY_PORT=free_port(),
        ICC_BROKER_PORT=free_port(),
        ICC_TOPIC_PARTITIONS=6,
        ICC_MAX_BODY_BYTES=4 * 1024 * 1024,
    )
    secrets = load_or_create(settings.resolved_secrets_file)  # generated for this run only
    stack = Stack(settings)
    began = time.monotonic()
    try:
        print(f"starting embedded PostgreSQL, broker and one ingest worker in {data} …", flush=True)
        stack.start_infrastructure()
        holder = asyncio.run(_hold_relay(stack.database_url)) if args.relay_elsewhere else None
        # no rate limit: this is a load test of one machine's ingest, not of the limiter
        stack.start_service("ingest", ICC_RATE_LIMIT_PER_SECOND="0", ICC_MAX_BODY_BYTES=str(4 * 1024 * 1024))
        stack.wait_ready("ingest")
        phases = asyncio.run(measure(stack, secrets, args.seconds))
        if holder is not None:
            print("(the outbox relay was held off: these are commit rates without publishing)")
        outbox_rows = asyncio.run(_count_outbox(stack.database_url))
        report(phases, outbox_rows)
        print(f"(whole run {time.monotonic() - began:.0f} s)")
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)
    return 0


async def _hold_relay(url: str) -> asyncpg.Connection:
    """Win the relay election before ingest starts; the session lock lasts until this process exits."""
    conn = await asyncpg.connect(url)
    await conn.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK)
    return conn


async def _count_outbox(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox"))
    finally:
        await conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
