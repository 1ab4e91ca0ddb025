"""The live stream across replicas and restarts: two gateways serve one site, and a client's
cursor resumes it on any replica, before or after a restart, without loss or duplication."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from icc.embedded import free_port, wait_for_port
from icc.stack import Stack
from icc.watch import watch
from services.gateway.stream import CLOSE_DEADLINE_SECONDS
from shared.auth import Role, mint_token
from shared.secrets_store import Secrets
from tests.conftest import eventually
from tests.helpers import StreamClient, bed_event, post_signed, token

pytestmark = pytest.mark.e2e

SITE = "site:RXN01"


def start_second_gateway(stack: Stack) -> str:
    """Another gateway replica on its own port, on the same broker and database."""
    first = stack.processes.pop("gateway")
    port = free_port()
    stack.start_service("gateway", "--port", str(port))
    stack.processes["gateway-b"] = stack.processes.pop("gateway")
    stack.processes["gateway"] = first
    url = f"http://{stack.settings.host}:{port}"
    wait_for_port(stack.settings.host, port, 60)
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "second gateway not ready"
        time.sleep(0.2)
    return url


async def post_bed(client: httpx.AsyncClient, stack: Stack, secrets: Secrets, bed: str, status: str) -> None:
    response = await post_signed(
        client, f"{stack.url_of('ingest')}/v1/bed-events", secrets, bed_event(bed, status)
    )
    assert response.status_code == 202, response.text


async def ward_state(
    client: httpx.AsyncClient, stack: Stack, secrets: Secrets, ward_id: str
) -> dict[str, Any]:
    jwt = token(secrets, Role.site_manager, SITE)
    response = await client.get(
        f"{stack.url_of('command-centre')}/v1/wards/{ward_id}/state",
        headers={"Authorization": f"Bearer {jwt}"},
    )
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def ward_version(client: httpx.AsyncClient, stack: Stack, secrets: Secrets, ward_id: str) -> int:
    return int((await ward_state(client, stack, secrets, ward_id))["version"])


async def warm_up(client: httpx.AsyncClient, stack: Stack, secrets: Secrets) -> None:
    """The site's first event publishes every ward of it; let that settle before counting changes."""
    await post_bed(client, stack, secrets, "RXN01-CCU-B1-1", "occupied")

    async def published() -> bool:
        return await ward_version(client, stack, secrets, "RXN01-CHW") > 0

    await eventually(published)


def bed_of(delta: dict, bed_id: str) -> str | None:
    return delta.get("ward", {}).get("beds", {}).get(bed_id)


async def test_two_replicas_serve_one_site_and_a_cursor_resumes_on_either(
    stack: Stack, test_secrets: Secrets
) -> None:
    async with httpx.AsyncClient() as client:
        await warm_up(client, stack, test_secrets)
    second = await asyncio.to_thread(start_second_gateway, stack)
    jwt = token(test_secrets, Role.site_manager, SITE)
    on_first = await StreamClient.connect(stack.url_of("gateway"), jwt, SITE)
    on_second = await StreamClient.connect(second, jwt, SITE)
    await on_first.next("snapshot")
    await on_second.next("snapshot")
    async with httpx.AsyncClient() as client:
        await post_bed(client, stack, test_secrets, "RXN01-AMU-B1-1", "occupied")
        first_delta, _ = await on_first.until(lambda d: bed_of(d, "RXN01-AMU-B1-1") == "occupied")
        second_delta, _ = await on_second.until(lambda d: bed_of(d, "RXN01-AMU-B1-1") == "occupied")
        assert first_delta["ward"] == second_delta["ward"]
        cursor = first_delta["cursor"]
        await on_first.close()

        await post_bed(client, stack, test_secrets, "RXN01-SAU-B1-1", "closed")
        await on_second.until(lambda d: bed_of(d, "RXN01-SAU-B1-1") == "closed")
        # the cursor from the first replica resumes on the second: only the ward that changed
        resumed = await StreamClient.connect(second, jwt, SITE, cursor=cursor)
        frame = await resumed.next("resume", "snapshot")
        assert frame["type"] == "resume"
        assert [w["ward_id"] for w in frame["wards"]] == ["RXN01-SAU"]
        assert frame["wards"][0]["beds"]["RXN01-SAU-B1-1"] == "closed"
    for c in (on_second, resumed):
        await c.close()


def worker_processes(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def any_alive(pids: list[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_gateway_workers_are_replicas_that_each_serve_the_stream(
    stack: Stack, test_secrets: Secrets
) -> None:
    async with httpx.AsyncClient() as client:
        await warm_up(client, stack, test_secrets)
    stack.stop_service("gateway")
    stack.start_service("gateway", ICC_GATEWAY_WORKERS="2")
    await asyncio.to_thread(stack.wait_ready, "gateway")
    jwt = token(test_secrets, Role.site_manager, SITE)

    async def connected() -> bool:
        return len(worker_processes(stack.processes["gateway"].pid)) >= 2

    await eventually(connected)
    # the port is shared: the kernel hands each connection to one worker or the other
    clients = [await StreamClient.connect(stack.url_of("gateway"), jwt, SITE) for _ in range(12)]
    for c in clients:
        await c.next("snapshot")
    async with httpx.AsyncClient() as client:
        await post_bed(client, stack, test_secrets, "RXN01-AMU-B1-4", "occupied")
    wards = [(await c.until(lambda d: bed_of(d, "RXN01-AMU-B1-4") == "occupied"))[0]["ward"] for c in clients]
    assert all(w == wards[0] for w in wards), "every worker publishes the same version of the ward"
    for c in clients:
        await c.close()
    # a supervisor killed outright takes its workers with it: nothing keeps holding the port
    workers = worker_processes(stack.processes["gateway"].pid)
    stack.processes["gateway"].kill()
    stack.processes["gateway"].wait(10)

    async def workers_gone() -> bool:
        return not any_alive(workers)

    await eventually(workers_gone, timeout=15)


async def test_resume_across_a_gateway_restart_loses_and_repeats_nothing(
    stack: Stack, test_secrets: Secrets
) -> None:
    async with httpx.AsyncClient() as client:
        await warm_up(client, stack, test_secrets)
    jwt = token(test_secrets, Role.site_manager, SITE)
    watcher = await StreamClient.connect(stack.url_of("gateway"), jwt, SITE)
    await watcher.next("snapshot")
    async with httpx.AsyncClient() as client:
        await post_bed(client, stack, test_secrets, "RXN01-AMU-B1-2", "occupied")
        delta, _ = await watcher.until(lambda d: bed_of(d, "RXN01-AMU-B1-2") == "occupied")
        cursor = delta["cursor"]

        stack.stop_service("gateway", signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(15):
                while True:
                    await watcher.ws.recv()

        before = {w: await ward_version(client, stack, test_secrets, w) for w in ("RXN01-WD10", "RXN01-WD11")}
        await post_bed(client, stack, test_secrets, "RXN01-WD10-B1-1", "occupied")
        await post_bed(client, stack, test_secrets, "RXN01-WD11-B1-1", "closed")
        await post_bed(client, stack, test_secrets, "RXN01-WD11-B1-2", "occupied")

        async def applied() -> bool:
            # both WD11 changes may land in one batch, which publishes WD11 once: check the beds
            wd10 = await ward_state(client, stack, test_secrets, "RXN01-WD10")
            wd11 = await ward_state(client, stack, test_secrets, "RXN01-WD11")
            return (
                wd10["version"] > before["RXN01-WD10"]
                and wd10["beds"]["RXN01-WD10-B1-1"] == "occupied"
                and wd11["beds"]["RXN01-WD11-B1-1"] == "closed"
                and wd11["beds"]["RXN01-WD11-B1-2"] == "occupied"
            )

        await eventually(applied)
        stack.start_service("gateway")
        await asyncio.to_thread(stack.wait_ready, "gateway")

        resumed = await StreamClient.connect(stack.url_of("gateway"), jwt, SITE, cursor=cursor)
        frame = await resumed.next("resume", "snapshot")
        assert frame["type"] == "resume", "a cursor from before the restart is still good"
        wards = {w["ward_id"]: w for w in frame["wards"]}
        assert sorted(wards) == ["RXN01-WD10", "RXN01-WD11"], "exactly the wards that changed, each once"
        assert wards["RXN01-WD10"]["beds"]["RXN01-WD10-B1-1"] == "occupied"
        assert wards["RXN01-WD11"]["beds"]["RXN01-WD11-B1-1"] == "closed"
        assert wards["RXN01-WD11"]["beds"]["RXN01-WD11-B1-2"] == "occupied"
        # and the stream goes on from there
        await post_bed(client, stack, test_secrets, "RXN01-AMU-B1-3", "occupied")
        await resumed.until(lambda d: bed_of(d, "RXN01-AMU-B1-3") == "occupied")
        await resumed.ping()
        await resumed.close()


# The slow-client tests time the changes of one bed on the screens that read, and compare how long
# they take while another screen stalls with how long they took before it did: a bound relative to
# the same run, because the machine's noise is not the gateway's.
BED = "RXN02-W1-B1-1"
WARD = "RXN02-W1"  # BED's ward: on the site RXN02, in the system QXN
PACE = 0.05  # seconds between timed changes, so a phase spans more than one hiccup of the machine
# Sent to a stalled system screen, this fills its socket's kernel buffers, the gateway's write buffer
# (64 KiB before writing pauses) and a queue of ICC_STREAM_QUEUE_FRAMES=8 three times over.
STALL_BYTES = 384 * 1024


async def restart_gateway(stack: Stack, **env: str) -> str:
    stack.stop_service("gateway")
    stack.start_service("gateway", **env)
    await asyncio.to_thread(stack.wait_ready, "gateway")
    return stack.url_of("gateway")


class ReadingScreen:
    """A screen that reads everything it is sent. Every frame is kept, to show that none was missed
    or coalesced, and the arrival of each of BED's changes is timed."""

    def __init__(self, client: StreamClient, snapshot: dict[str, Any]) -> None:
        self.client = client
        self.frames = [snapshot]
        self.received = 0  # bytes of the frames read since the snapshot

    @classmethod
    async def connect(cls, gateway: str, jwt: str, scope: str) -> ReadingScreen:
        client = await StreamClient.connect(gateway, jwt, scope)
        return cls(client, await client.next("snapshot"))

    async def arrival(self, status: str, timeout: float) -> tuple[float, int]:
        """Read up to the delta that shows BED in `status`: when it arrived, and the ward's version."""
        async with asyncio.timeout(timeout):
            while True:
                data = await self.client.ws.recv(decode=False)
                arrived = time.monotonic()
                self.received += len(data)
                frame = orjson.loads(data)
                self.frames.append(frame)
                if frame["type"] == "delta" and bed_of(frame, BED) == status:
                    return arrived, int(frame["ward"]["version"])

    def assert_every_delta_in_order(self) -> None:
        assert not [f for f in self.frames if f["type"] == "resync"], "a reading screen was coalesced"
        seqs = [f["seq"] for f in self.frames if f["type"] in ("snapshot", "delta")]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a delta missed or out of order"


@dataclass(frozen=True)
class Delivery:
    """One change of BED as the reading screens received it."""

    latencies: list[float]  # per screen: seconds from posting the change to its delta arriving
    version: int  # the ward's version that carried it


async def change_bed(
    http: httpx.AsyncClient,
    stack: Stack,
    secrets: Secrets,
    n: int,
    screens: list[ReadingScreen],
    timeout: float = 10.0,
) -> Delivery:
    """The `n`th change: BED occupied when `n` is odd, unoccupied when even. It is posted only when
    the previous one has reached every screen, so each is timed alone."""
    status = "occupied" if n % 2 else "unoccupied"
    posted = time.monotonic()
    await post_bed(http, stack, secrets, BED, status)
    arrivals = await asyncio.gather(*(screen.arrival(status, timeout) for screen in screens))
    versions = {version for _, version in arrivals}
    assert len(versions) == 1, f"the screens got change {n} in different versions: {arrivals}"
    return Delivery([arrived - posted for arrived, _ in arrivals], versions.pop())


async def timed_changes(
    http: httpx.AsyncClient, stack: Stack, secrets: Secrets, numbers: range, screens: list[ReadingScreen]
) -> list[Delivery]:
    deliveries = []
    for n in numbers:
        deliveries.append(await change_bed(http, stack, secrets, n, screens))
        await asyncio.sleep(PACE)
    return deliveries


def assert_served_as_before(
    before: list[Delivery], during: list[Delivery], screens: list[ReadingScreen]
) -> None:
    """Every change reached every screen in order, and the 90th percentile of a screen's delivery
    times while another screen stalls is within five times (plus 200 ms) of what it was before:
    generous for a noisy machine, but a change takes tens of milliseconds end to end, so a fan-out
    that waited on the stalled socket, even for a fraction of a second per change, exceeds it."""
    versions = [d.version for d in before + during]
    assert versions == sorted(set(versions)), versions
    for i, screen in enumerate(screens):
        screen.assert_every_delta_in_order()
        unstalled = statistics.quantiles([d.latencies[i] for d in before], n=10)[-1]
        stalled = statistics.quantiles([d.latencies[i] for d in during], n=10)[-1]
        assert stalled < 5 * unstalled + 0.2, (
            f"screen {i} slowed down: p90 {stalled:.3f} s while another stalls, {unstalled:.3f} s before"
        )


async def assert_stalled_throughout(ws: websockets.ClientConnection, timed: list[Delivery]) -> None:
    """The gateway's own sign that it found a screen slow is the `resync` that starts coalescing its
    queue. Read at last, the stalled screen has WARD's deltas ahead of that marker all older than
    the first timed change, and after it only the last one: it was coalescing, its socket taking
    nothing, from before the first timed change to the last."""
    frames: list[dict[str, Any]] = []
    ward: list[tuple[int, int]] = []  # WARD's deltas: (position among the frames, version)
    async with asyncio.timeout(30):
        while not ward or ward[-1][1] < timed[-1].version:
            frame = orjson.loads(await ws.recv())
            if frame.get("ward", {}).get("ward_id") == WARD:
                ward.append((len(frames), frame["ward"]["version"]))
            frames.append(frame)
    resyncs = [i for i, f in enumerate(frames) if f["type"] == "resync"]
    assert len(resyncs) == 1, f"the stalled screen was coalesced {len(resyncs)} times, not once"
    assert all(v < timed[0].version for i, v in ward if i < resyncs[0]), "not yet coalescing when timed"
    assert [v for i, v in ward if i > resyncs[0]] == [timed[-1].version], ward


async def test_a_client_that_never_reads_does_not_delay_the_others(
    stack: Stack, test_secrets: Secrets
) -> None:
    """A screen stops reading: its socket's buffers fill, the gateway's writes to it block and its
    queue coalesces. Two screens that read, one of the same scope and one of another, get every
    change meanwhile, in order and no later than before it stalled. Small buffers and a small queue
    make the stall quick, and the stalled screen is not dropped during the test."""
    gateway = await restart_gateway(
        stack,
        ICC_STREAM_QUEUE_FRAMES="8",
        ICC_STREAM_SEND_BUFFER_BYTES="4096",
        ICC_STREAM_DROP_AFTER_SECONDS="120",
    )
    jwt = token(test_secrets, Role.wall_display, "system:QXN")
    screens = [await ReadingScreen.connect(gateway, jwt, scope) for scope in ("system:QXN", "site:RXN02")]
    async with httpx.AsyncClient() as http:
        # the site's first change publishes each of its wards, and is slow: not timed
        await change_bed(http, stack, test_secrets, 0, screens, timeout=30)
        before = await timed_changes(http, stack, test_secrets, range(1, 21), screens)
        stalled = await stalled_client(gateway, jwt)
        # the stalled screen is sent what the reading system screen gets: STALL_BYTES of it
        filled_from, n = screens[0].received, 21
        while screens[0].received - filled_from < STALL_BYTES:
            await change_bed(http, stack, test_secrets, n, screens)
            n += 1
        during = await timed_changes(http, stack, test_secrets, range(n, n + 20), screens)
    await assert_stalled_throughout(stalled, during)
    assert_served_as_before(before, during, screens)
    for screen in screens:
        await screen.client.close()
    await stalled.close()


async def stalled_client(gateway: str, jwt: str) -> websockets.ClientConnection:
    """A screen that subscribes to the whole system and then reads nothing: tiny receive buffers,
    and the client library stops reading as soon as one message waits."""
    host, port = gateway.removeprefix("http://").rsplit(":", 1)
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    small.connect((host, int(port)))
    ws = await websockets.connect(
        gateway.replace("http", "ws", 1) + "/v1/stream", sock=small, max_queue=1, max_size=2**20
    )
    await ws.send(orjson.dumps({"type": "auth", "token": jwt}).decode())
    await ws.send(orjson.dumps({"type": "subscribe", "scope": "system:QXN"}).decode())
    return ws


async def test_a_client_that_stays_behind_is_closed_as_too_slow_and_the_others_are_served(
    stack: Stack, test_secrets: Secrets
) -> None:
    """Screens that stop reading (a tablet asleep with its socket open): once the kernel buffers,
    bounded by ICC_STREAM_SEND_BUFFER_BYTES, and the queue are full, each is coalesced and then
    closed with 4408, or cut off if it does not take the close frame either. A reading screen gets
    every change throughout, in order and no later than before they stalled: while they fall
    behind, while they are closed, and while the frozen one's close frame waits to go out."""
    drop_after = 2.0
    gateway = await restart_gateway(
        stack,
        ICC_STREAM_QUEUE_FRAMES="4",
        ICC_STREAM_DROP_AFTER_SECONDS=str(drop_after),
        ICC_STREAM_SEND_BUFFER_BYTES="4096",
    )
    jwt = token(test_secrets, Role.wall_display, "system:QXN")
    screens = [await ReadingScreen.connect(gateway, jwt, "system:QXN")]
    async with httpx.AsyncClient() as http:
        await change_bed(http, stack, test_secrets, 0, screens, timeout=30)  # not timed, as above
        before = await timed_changes(http, stack, test_secrets, range(1, 21), screens)
        stalled = await stalled_client(gateway, jwt)  # reads again once it has been dropped
        frozen = await stalled_client(gateway, jwt)  # never reads again: not even the close frame
        frozen_socket = frozen.transport.get_extra_info("socket")
        filled_from, n, during = screens[0].received, 21, []
        dropped: asyncio.Task[None] | None = None
        error = 0
        # changes go on until the frozen screen is cut off (reset) CLOSE_DEADLINE_SECONDS after it
        # was closed, rather than left to wait for a reader that never comes
        async with asyncio.timeout(CLOSE_DEADLINE_SECONDS + 30):
            while not error:
                during.append(await change_bed(http, stack, test_secrets, n, screens))
                n += 1
                await asyncio.sleep(PACE)
                # Both are behind by now: half of STALL_BYTES still fills a queue of 4 and the
                # buffers twice over. Once behind for longer than allowed (checked every second)
                # they are closed, and only then does the stalled one read: soon enough, even when
                # changes are slow, to take its close frame within CLOSE_DEADLINE_SECONDS.
                if dropped is None and screens[0].received - filled_from >= STALL_BYTES // 2:
                    dropped = asyncio.create_task(read_until_closed(stalled, after=drop_after + 2))
                error = frozen_socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert_served_as_before(before, during, screens)
    assert error == errno.ECONNRESET, errno.errorcode.get(error)
    assert dropped is not None, "the frozen screen was cut off before it could have fallen behind"
    await dropped
    assert stalled.close_code == 4408
    assert "reconnect" in (stalled.close_reason or "")
    await frozen.close()
    live = screens[0].client
    await live.ping()
    assert (await live.next("pong", timeout=5))["type"] == "pong", "the reading client stays connected"
    await live.close()


async def read_until_closed(ws: websockets.ClientConnection, after: float) -> None:
    """Leave a stalled screen alone for `after` seconds, then read what reaches it, up to its close."""
    await asyncio.sleep(after)
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await ws.recv()  # what was already on its way, then the close


async def test_icc_watch_prints_the_feed(stack: Stack, test_secrets: Secrets) -> None:
    lines: list[str] = []
    jwt = token(test_secrets, Role.wall_display, "site:RXN02")
    watching = asyncio.create_task(watch(stack.url_of("gateway"), jwt, ["site:RXN02"], lines.append, limit=3))
    async with httpx.AsyncClient() as client:
        await eventually(lambda: _true_if(any(line.startswith("snapshot site:RXN02") for line in lines)))
        await post_bed(client, stack, test_secrets, "RXN02-W2-B1-1", "occupied")
    await asyncio.wait_for(watching, 30)
    assert lines[0].startswith("ready")
    assert lines[1].startswith("snapshot site:RXN02")
    assert lines[2].startswith(("ward     site:RXN02", "summary  site:RXN02")), lines


async def _true_if(value: bool) -> bool:
    return value


async def test_a_silent_client_is_closed_as_idle_and_a_pinging_one_stays(
    stack: Stack, test_secrets: Secrets
) -> None:
    stack.stop_service("gateway")
    stack.start_service("gateway", ICC_STREAM_IDLE_SECONDS="3")
    await asyncio.to_thread(stack.wait_ready, "gateway")
    jwt = token(test_secrets, Role.wall_display, SITE)
    silent = await StreamClient.connect(stack.url_of("gateway"), jwt, SITE)
    pinging = await StreamClient.connect(stack.url_of("gateway"), jwt, SITE)
    await silent.next("snapshot")
    await pinging.next("snapshot")
    started = time.monotonic()
    while time.monotonic() - started < 6:
        await pinging.ping()
        await pinging.next("pong", timeout=5)
        await asyncio.sleep(1)
    with pytest.raises(websockets.ConnectionClosed):
        await silent.next("never", timeout=5)
    assert silent.ws.close_code == 4410
    assert "ping" in (silent.ws.close_reason or "")
    await pinging.ping()
    assert (await pinging.next("pong", timeout=5))["type"] == "pong", "a pinging client stays connected"
    await pinging.close()


async def test_gateway_workers_still_starting_end_with_a_killed_supervisor(stack: Stack) -> None:
    stack.stop_service("gateway")
    supervisor = stack.start_service("gateway", ICC_GATEWAY_WORKERS="2")

    async def spawned() -> list[int]:
        workers = worker_processes(supervisor.pid)
        return workers if len(workers) >= 2 else []

    workers = await eventually(spawned, interval=0.02)
    supervisor.kill()  # most likely before the workers have loaded the app
    supervisor.wait(10)

    async def workers_gone() -> bool:
        return not any_alive(workers)

    await eventually(workers_gone, timeout=30)


def short_token(secrets: Secrets, ttl_seconds: int, scope: str) -> str:
    """A token that expires within `ttl_seconds` (its `exp` is in whole seconds)."""
    role = Role.wall_display
    return mint_token(
        secrets.jwt_secret, subject=f"test-{role.value}", role=role, scopes=[scope], ttl_seconds=ttl_seconds
    )


async def send(client: StreamClient, message: dict[str, Any]) -> None:
    await client.ws.send(orjson.dumps(message).decode())


async def test_an_expired_token_closes_the_connection_unless_renewed_in_time(
    stack: Stack, test_secrets: Secrets
) -> None:
    gateway = stack.url_of("gateway")
    lapsing = await StreamClient.connect(gateway, short_token(test_secrets, 2, SITE), SITE)
    renewing = await StreamClient.connect(gateway, short_token(test_secrets, 2, SITE), SITE)
    await renewing.next("snapshot")
    await send(renewing, {"type": "auth", "token": token(test_secrets, Role.wall_display, SITE)})
    renewed = await renewing.next("ready")
    assert renewed["unsubscribed"] == []
    assert datetime.fromisoformat(renewed["expires_at"]) > datetime.now(UTC) + timedelta(hours=11)

    with pytest.raises(websockets.ConnectionClosed):
        await lapsing.next("never", timeout=10)
    assert lapsing.ws.close_code == 4401
    assert "expired" in (lapsing.ws.close_reason or "")
    await asyncio.sleep(1)  # well past the first token's expiry
    await renewing.ping()
    assert (await renewing.next("pong", timeout=5))["type"] == "pong", "the renewed connection stays"
    # a renewal with a token that does not verify ends the connection
    await send(renewing, {"type": "auth", "token": short_token(test_secrets, -1, SITE)})
    with pytest.raises(websockets.ConnectionClosed):
        await renewing.next("never", timeout=10)
    assert renewing.ws.close_code == 4401


async def test_a_renewed_token_ends_the_subscriptions_it_does_not_allow(
    stack: Stack, test_secrets: Secrets
) -> None:
    gateway = stack.url_of("gateway")
    watcher = await StreamClient.connect(gateway, token(test_secrets, Role.wall_display, "system:QXN"), SITE)
    await watcher.next("snapshot")
    await send(watcher, {"type": "subscribe", "scope": "site:RXN02"})
    await watcher.next("snapshot")
    await send(watcher, {"type": "auth", "token": token(test_secrets, Role.wall_display, "site:RXN02")})
    ready = await watcher.next("ready")
    assert ready["scopes"] == ["site:RXN02"] and ready["unsubscribed"] == [SITE]
    async with httpx.AsyncClient() as client:
        await post_bed(client, stack, test_secrets, "RXN01-AMU-B1-1", "occupied")
        await post_bed(client, stack, test_secrets, "RXN02-W1-B1-1", "occupied")
        _, seen = await watcher.until(lambda d: bed_of(d, "RXN02-W1-B1-1") == "occupied")
    assert {d["scope"] for d in seen} == {"site:RXN02"}
    await watcher.ping()
    while (message := await watcher.next("pong", "delta"))["type"] != "pong":
        assert message["scope"] == "site:RXN02", message
    # what only the old token allowed is refused from now on
    await send(watcher, {"type": "subscribe", "scope": SITE})
    with pytest.raises(websockets.ConnectionClosed):
        await watcher.next("never", timeout=10)
    assert watcher.ws.close_code == 4403


async def test_a_client_that_asks_without_reading_is_closed(stack: Stack, test_secrets: Secrets) -> None:
    """Subscribes answered by snapshots it never reads: the gateway stops at MAX_UNANSWERED of them
    rather than queue every one."""
    jwt = token(test_secrets, Role.wall_display, "system:QXN")
    gateway = stack.url_of("gateway")
    asking = await stalled_client(gateway, jwt)
    subscribe = orjson.dumps({"type": "subscribe", "scope": "system:QXN"}).decode()
    for _ in range(1000):
        await asking.send(subscribe)
    received = 0
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await asking.recv()  # what was already on its way, then the close
                received += 1
    assert asking.close_code == 4408, (asking.close_code, received)
    assert "unanswered" in (asking.close_reason or "")
    assert received < 1000
    live = await StreamClient.connect(gateway, jwt, "system:QXN")
    await live.next("snapshot")
    await live.close()
