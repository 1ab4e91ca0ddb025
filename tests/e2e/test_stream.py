"""The live stream across replicas and restarts: two gateways serve one site, and a client's
cursor resumes it on any replica, before or after a restart, without loss or duplication."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import time
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


async def test_a_client_that_never_reads_does_not_delay_the_others(
    stack: Stack, test_secrets: Secrets
) -> None:
    jwt = token(test_secrets, Role.wall_display, "system:QXN")
    url = stack.url_of("gateway").replace("http", "ws", 1) + "/v1/stream"
    # a stalled reader: tiny receive buffers and it never reads after subscribing
    stalled = await websockets.connect(url, max_queue=1, max_size=2**20)
    await stalled.send(orjson.dumps({"type": "auth", "token": jwt}).decode())
    await stalled.send(orjson.dumps({"type": "subscribe", "scope": "system:QXN"}).decode())
    live = await StreamClient.connect(stack.url_of("gateway"), jwt, "system:QXN")
    await live.next("snapshot")
    async with httpx.AsyncClient() as client:
        for i in range(1, 31):
            status = "occupied" if i % 2 else "unoccupied"
            await post_bed(client, stack, test_secrets, "RXN02-W1-B1-1", status)
            # each change reaches the reading client promptly although the other reads nothing
            delta, _ = await live.until(lambda d, s=status: bed_of(d, "RXN02-W1-B1-1") == s, timeout=10)
            assert delta["ward"]["ward_id"] == "RXN02-W1"
    await live.close()
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
    closed with 4408, or cut off if it does not take the close frame either; a reading screen gets
    every change meanwhile."""
    stack.stop_service("gateway")
    stack.start_service(
        "gateway",
        ICC_STREAM_QUEUE_FRAMES="4",
        ICC_STREAM_DROP_AFTER_SECONDS="2",
        ICC_STREAM_SEND_BUFFER_BYTES="4096",
    )
    await asyncio.to_thread(stack.wait_ready, "gateway")
    jwt = token(test_secrets, Role.wall_display, "system:QXN")
    gateway = stack.url_of("gateway")
    stalled = await stalled_client(gateway, jwt)  # reads again once it has been dropped
    frozen = await stalled_client(gateway, jwt)  # never reads again: not even the close frame
    live = await StreamClient.connect(gateway, jwt, "system:QXN")
    await live.next("snapshot")
    async with httpx.AsyncClient() as client:
        for i in range(1, 41):
            status = "occupied" if i % 2 else "unoccupied"
            await post_bed(client, stack, test_secrets, "RXN02-W1-B1-1", status)
            await live.until(lambda d, s=status: bed_of(d, "RXN02-W1-B1-1") == s, timeout=10)
    # behind for longer than the 2 s allowed (checked every second): the gateway closes it
    await asyncio.sleep(4)
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await stalled.recv()  # what was already on its way, then the close
    assert stalled.close_code == 4408
    assert "reconnect" in (stalled.close_reason or "")
    # a connection that cannot take even the close frame is cut off (reset) after
    # CLOSE_DEADLINE_SECONDS, rather than left to wait for a reader that never comes
    await asyncio.sleep(CLOSE_DEADLINE_SECONDS + 2)
    frozen_socket = frozen.transport.get_extra_info("socket")
    assert frozen_socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    await frozen.close()
    await live.ping()
    assert (await live.next("pong", timeout=5))["type"] == "pong", "the reading client stays connected"
    await live.close()


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
