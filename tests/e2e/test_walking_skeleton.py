"""One bed event from a signed webhook to a WebSocket client, on the real stack."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from icc.stack import Stack
from shared.auth import Role
from shared.secrets_store import Secrets
from tests.conftest import eventually
from tests.helpers import StreamClient, bed_event, opened, post_signed, token

pytestmark = pytest.mark.e2e

BED = "RXN01-AMU-B1-1"
WARD = "RXN01-AMU"


async def ward_state(client: httpx.AsyncClient, stack: Stack, secrets: Secrets, ward_id: str = WARD) -> dict:
    jwt = token(secrets, Role.site_manager, "site:RXN01")
    response = await client.get(
        f"{stack.url_of('command-centre')}/v1/wards/{ward_id}/state",
        headers={"Authorization": f"Bearer {jwt}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_bed_event_reaches_websocket_and_rest(stack: Stack, test_secrets: Secrets) -> None:
    gateway = stack.url_of("gateway")
    site_watcher = await StreamClient.connect(
        gateway, token(test_secrets, Role.wall_display, "site:RXN01"), "site:RXN01"
    )
    system_watcher = await StreamClient.connect(
        gateway, token(test_secrets, Role.wall_display, "system:QXN"), "system:QXN"
    )
    snapshot = await site_watcher.next("snapshot")
    assert snapshot["scope"] == "site:RXN01"
    assert {w["id"] for s in snapshot["organisation"]["sites"] for w in s["wards"]} >= {WARD}
    await system_watcher.next("snapshot")

    async with httpx.AsyncClient() as client:
        response = await post_signed(
            client, f"{stack.url_of('ingest')}/v1/bed-events", test_secrets, bed_event(BED, "occupied")
        )
        assert response.status_code == 202, response.text
        assert response.json()["duplicate"] is False

        delta, seen = await site_watcher.until(lambda d: _bed_in(d, BED) == "occupied")
        assert delta["ward"]["ward_id"] == WARD
        # every message of the scope is numbered one after the other, from the snapshot on
        assert [d["seq"] for d in seen] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(seen)))
        system_delta, _ = await system_watcher.until(lambda d: _bed_in(d, BED) == "occupied")
        assert system_delta["ward"] == delta["ward"]

        rest = await ward_state(client, stack, test_secrets)
        assert rest["beds"][BED] == "occupied"
        assert rest["version"] == delta["ward"]["version"]
        assert rest["counts"] == delta["ward"]["counts"]
        assert rest["available"] == rest["beds_total"] - 1
    await site_watcher.close()
    await system_watcher.close()


async def test_same_event_twice_changes_state_once(stack: Stack, test_secrets: Secrets) -> None:
    event = bed_event(BED, "closed", event_id=uuid.uuid4())
    async with httpx.AsyncClient() as client:
        url = f"{stack.url_of('ingest')}/v1/bed-events"
        first = await post_signed(client, url, test_secrets, event)
        assert first.status_code == 202
        assert first.json()["duplicate"] is False
        assert first.json()["event_id"] == event["event_id"]
        state = await eventually(
            lambda: _when(ward_state(client, stack, test_secrets), lambda s: s["beds"][BED] == "closed")
        )
        version = state["version"]

        second = await post_signed(client, url, test_secrets, event)
        assert second.status_code == 202
        assert second.json() == {**first.json(), "duplicate": True}
        # a later, different event proves the pipeline has moved past the duplicate
        marker = await post_signed(client, url, test_secrets, bed_event("RXN01-AMU-B1-2", "occupied"))
        assert marker.status_code == 202
        state = await eventually(
            lambda: _when(
                ward_state(client, stack, test_secrets), lambda s: s["beds"]["RXN01-AMU-B1-2"] == "occupied"
            )
        )
        assert state["version"] == version + 1  # the marker's change only: the duplicate changed nothing
        assert state["beds"][BED] == "closed"


async def test_late_event_is_applied_by_event_time(stack: Stack, test_secrets: Secrets) -> None:
    now = datetime.now(UTC)
    async with httpx.AsyncClient() as client:
        url = f"{stack.url_of('ingest')}/v1/bed-events"
        assert (
            await post_signed(client, url, test_secrets, bed_event(BED, "housekeeping", at=now))
        ).status_code == 202
        # arrives later but happened earlier: must not overwrite the newer status
        assert (
            await post_signed(
                client, url, test_secrets, bed_event(BED, "occupied", at=now - timedelta(minutes=5))
            )
        ).status_code == 202
        assert (
            await post_signed(client, url, test_secrets, bed_event("RXN01-AMU-B1-3", "closed", at=now))
        ).status_code == 202
        state = await eventually(
            lambda: _when(
                ward_state(client, stack, test_secrets), lambda s: s["beds"]["RXN01-AMU-B1-3"] == "closed"
            )
        )
        assert state["beds"][BED] == "housekeeping"


async def test_bad_input_gets_problem_json_and_is_quarantined(
    stack: Stack, test_secrets: Secrets, db
) -> None:
    url = f"{stack.url_of('ingest')}/v1/bed-events"
    async with httpx.AsyncClient() as client:
        unsigned = await client.post(
            url,
            content=orjson.dumps(bed_event(BED, "occupied")),
            headers={"content-type": "application/json"},
        )
        assert unsigned.status_code == 401
        assert unsigned.headers["content-type"] == "application/problem+json"
        assert "X-ICC-Source" in unsigned.json()["detail"]

        bad_status = bed_event(BED, "on-fire")
        invalid = await post_signed(client, url, test_secrets, bad_status)
        assert invalid.status_code == 422
        problem = invalid.json()
        assert invalid.headers["content-type"] == "application/problem+json"
        assert problem["status"] == 422 and problem["type"].endswith("/validation")
        assert [e["field"] for e in problem["errors"]] == ["status"]

        unknown = await post_signed(client, url, test_secrets, bed_event("RXN01-AMU-B9-9", "occupied"))
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "bed_id"

        garbage = await post_signed(client, url, test_secrets, b"\x00\xffnot json")
        assert garbage.status_code == 422

        too_big = await post_signed(client, url, test_secrets, b"{" + b" " * 2_000_000 + b"}")
        assert too_big.status_code == 413

        admin = token(test_secrets, Role.admin, "system:QXN")
        listed = await client.get(
            f"{stack.url_of('ingest')}/v1/quarantine", headers={"Authorization": f"Bearer {admin}"}
        )
        assert listed.status_code == 200
        assert [i["status_code"] for i in listed.json()["items"]] == [413, 422, 422, 422, 401]
        nurse = token(test_secrets, Role.ward_nurse, f"ward:{WARD}")
        forbidden = await client.get(
            f"{stack.url_of('ingest')}/v1/quarantine", headers={"Authorization": f"Bearer {nurse}"}
        )
        assert forbidden.status_code == 403

    rows = await db.fetch("SELECT body FROM quarantine ORDER BY id")
    bodies = [opened(test_secrets, r["body"]) for r in rows]
    assert bodies[1] == orjson.dumps(bad_status)
    assert bodies[3] == b"\x00\xffnot json"
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_rest_and_stream_enforce_scopes(stack: Stack, test_secrets: Secrets) -> None:
    nurse = token(test_secrets, Role.ward_nurse, f"ward:{WARD}")
    async with httpx.AsyncClient() as client:
        cc = stack.url_of("command-centre")
        own = await client.get(f"{cc}/v1/wards/{WARD}/state", headers={"Authorization": f"Bearer {nurse}"})
        assert own.status_code == 200
        site = await client.get(f"{cc}/v1/sites/RXN01/state", headers={"Authorization": f"Bearer {nurse}"})
        assert site.status_code == 403 and site.headers["content-type"] == "application/problem+json"
        anonymous = await client.get(f"{cc}/v1/sites/RXN01/state")
        assert anonymous.status_code == 401
        manager = token(test_secrets, Role.site_manager, "site:RXN02")
        other_site = await client.get(
            f"{cc}/v1/sites/RXN01/state", headers={"Authorization": f"Bearer {manager}"}
        )
        assert other_site.status_code == 403
        analyst = {"Authorization": f"Bearer {token(test_secrets, Role.icb_analyst, 'system:QXN')}"}

        async def system_beds() -> int | None:
            system = await client.get(f"{cc}/v1/systems/QXN/state", headers=analyst)
            assert system.status_code == 200
            metrics = system.json()["metrics"]  # None until the system stage has folded both sites
            return metrics["beds_total"] if metrics and metrics["beds_total"] == 562 else None

        assert await eventually(system_beds) == 562

    import websockets

    ws_url = stack.url_of("gateway").replace("http", "ws", 1) + "/v1/stream"
    async with websockets.connect(ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": nurse}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ready"
        await ws.send(orjson.dumps({"type": "subscribe", "scope": "site:RXN01"}).decode())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 4403
    async with websockets.connect(ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": "not-a-token"}).decode())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 4401


def _bed_in(delta: dict, bed_id: str) -> str | None:
    return delta.get("ward", {}).get("beds", {}).get(bed_id)


async def _when(coro, predicate):
    value = await coro
    return value if predicate(value) else None
