"""Escalations on the real stack: traffic fills a ward, the ward escalation is promoted to the site
when nobody acknowledges it, a site manager acknowledges it (a ward token may not), the site's
watchers see it and so do the ward's, up to its resolution; a system escalation reaches the system's
watchers only; and a command-centre killed before a deadline promotes exactly once after restart."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from icc.embedded import Broker
from icc.stack import Stack
from shared.auth import Role
from shared.organisation import Organisation
from shared.secrets_store import Secrets
from shared.settings import Settings
from tests.conftest import eventually, make_settings
from tests.helpers import StreamClient, bed_event, post_signed, token

pytestmark = pytest.mark.e2e

WARD = "RXN01-CCU"
WARD_ACK_SECONDS = 3


@pytest.fixture
def settings(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Settings:
    rules = {
        "version": "test",
        "ack_timeout_seconds": {"ward": WARD_ACK_SECONDS, "site": 600, "system": 600},
        "rules": [
            {
                "id": "ward-full",
                "description": "Ward has no available beds",
                "tier": "ward",
                "severity": "high",
                "all": [{"metric": "available", "op": "<=", "value": 0, "clear": 2}],
            }
        ],
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return make_settings(tmp_path, database_url, broker.bootstrap, secrets_file, ICC_ESCALATION_RULES=path)


def bearer(secrets: Secrets, role: Role, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(secrets, role, scope)}"}


async def escalations(
    client: httpx.AsyncClient, stack: Stack, secrets: Secrets, scope: str = "site:RXN01"
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{stack.url_of('command-centre')}/v1/escalations",
        params={"scope": scope},
        headers=bearer(secrets, Role.site_manager, "site:RXN01"),
    )
    assert response.status_code == 200, response.text
    return list(response.json()["escalations"])


async def test_full_ward_escalates_and_is_promoted_to_the_site(
    stack: Stack, test_secrets: Secrets, org: Organisation
) -> None:
    centre = stack.url_of("command-centre")
    watcher = await StreamClient.connect(
        stack.url_of("gateway"), token(test_secrets, Role.wall_display, "site:RXN01"), "site:RXN01"
    )
    snapshot = await watcher.next("snapshot")
    assert snapshot["escalations"] == []
    ward_jwt = token(test_secrets, Role.ward_nurse, f"ward:{WARD}")
    ward_watcher = await StreamClient.connect(stack.url_of("gateway"), ward_jwt, f"ward:{WARD}")
    await ward_watcher.next("snapshot")
    async with httpx.AsyncClient(timeout=30) as client:
        for bed in org.wards[WARD].bed_list:
            response = await post_signed(
                client, f"{stack.url_of('ingest')}/v1/bed-events", test_secrets, bed_event(bed.id, "occupied")
            )
            assert response.status_code == 202, response.text

        raised, _ = await watcher.until(lambda d: (d.get("escalation") or {}).get("rule") == "ward-full")
        escalation = raised["escalation"]
        assert (escalation["tier"], escalation["scope"]) == ("ward", f"ward:{WARD}")
        assert escalation["values"] == {"available": 0.0}

        # nobody acknowledges within the ward's timeout: promoted to the site, pushed to its watchers
        promoted, _ = await watcher.until(
            lambda d: (
                (d.get("escalation") or {}).get("id") == escalation["id"]
                and d["escalation"]["tier"] == "site"
            ),
            timeout=WARD_ACK_SECONDS + 30,
        )
        assert promoted["escalation"]["scope"] == "site:RXN01"
        # the ward it was raised at keeps seeing it: the promotion reaches the ward's watchers
        raised_at_ward, _ = await ward_watcher.until(
            lambda d: (d.get("escalation") or {}).get("id") == escalation["id"]
        )
        ward_cursor = raised_at_ward["cursor"]
        await ward_watcher.until(lambda d: (d.get("escalation") or {}).get("tier") == "site")
        late = await StreamClient.connect(stack.url_of("gateway"), ward_jwt, f"ward:{WARD}")
        assert [e["tier"] for e in (await late.next("snapshot"))["escalations"]] == ["site"]
        await late.close()

        nurse = bearer(test_secrets, Role.ward_nurse, f"ward:{WARD}")
        url = f"{centre}/v1/escalations/{escalation['id']}"
        refused = await client.post(f"{url}/acknowledge", headers=nurse)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")

        manager = bearer(test_secrets, Role.site_manager, "site:RXN01")
        acked = await client.post(f"{url}/acknowledge", headers=manager)
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged"
        seen, _ = await watcher.until(
            lambda d: (
                (d.get("escalation") or {}).get("id") == escalation["id"]
                and d["escalation"]["status"] == "acknowledged"
            )
        )
        assert seen["escalation"]["owner"] == "test-site_manager"

        noted = await client.post(f"{url}/notes", headers=manager, json={"text": "opening escalation beds"})
        assert noted.status_code == 200, noted.text
        actions = [t["action"] for t in noted.json()["timeline"]]
        assert actions == ["raised", "promoted", "acknowledged", "note"]

        export = await client.get(f"{url}/timeline.csv", headers=manager)
        assert export.status_code == 200
        assert export.text.splitlines()[0] == "escalation_id,at,actor,action,tier,detail"
        assert len(export.text.splitlines()) == 5

        display = bearer(test_secrets, Role.wall_display, "site:RXN01")
        assert (await client.post(f"{url}/resolve", headers=display)).status_code == 403
        assigned = await client.post(f"{url}/assign", headers=manager, json={"owner": "bed-bureau"})
        assert assigned.status_code == 200 and assigned.json()["owner"] == "bed-bureau"
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        snoozed = await client.post(f"{url}/snooze", headers=manager, json={"until": until})
        assert snoozed.status_code == 200, snoozed.text
        resolved = await client.post(f"{url}/resolve", headers=manager, json={"note": "beds opened"})
        assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
        assert (await client.post(f"{url}/acknowledge", headers=manager)).status_code == 409
        await watcher.until(
            lambda d: (
                (d.get("escalation") or {}).get("id") == escalation["id"]
                and d["escalation"]["status"] == "resolved"
            )
        )
        await ward_watcher.until(lambda d: (d.get("escalation") or {}).get("status") == "resolved")
        # and a ward screen that was away is told on resume that what it showed is resolved
        resumed = await StreamClient.connect(stack.url_of("gateway"), ward_jwt, f"ward:{WARD}", ward_cursor)
        frame = await resumed.next("resume", "snapshot")
        assert frame["type"] == "resume"
        assert [(e["id"], e["status"]) for e in frame["escalations"]] == [(escalation["id"], "resolved")]
        await resumed.close()
        # the same rule and ward (still full): never a second escalation
        assert [e["id"] for e in await escalations(client, stack, test_secrets)] == [escalation["id"]]
        # the ward still sees what it escalated, read-only
        mine = await client.get(f"{centre}/v1/escalations", params={"scope": f"ward:{WARD}"}, headers=nurse)
        assert [e["id"] for e in mine.json()["escalations"]] == [escalation["id"]]
    await watcher.close()
    await ward_watcher.close()


async def test_a_system_escalation_reaches_the_system_watchers_only(
    stack: Stack, test_secrets: Secrets
) -> None:
    gateway = stack.url_of("gateway")
    admin = token(test_secrets, Role.admin, "system:QXN")
    first_site = await StreamClient.connect(gateway, admin, "site:RXN01")
    system = await StreamClient.connect(gateway, admin, "system:QXN")
    await first_site.next("snapshot")
    await system.next("snapshot")
    raised = await system.act({"action": "raise", "scope": "system:QXN", "reason": "ambulances held"})
    assert raised["status"] == 201, raised
    await system.until(lambda d: (d.get("escalation") or {}).get("id") == raised["id"])
    # a site escalation after it, stored in the same order: the site's first escalation delta
    at_site = await system.act({"action": "raise", "scope": "site:RXN01", "reason": "CT down"})
    assert at_site["status"] == 201, at_site
    first, _ = await first_site.until(lambda d: "escalation" in d)
    assert first["escalation"]["id"] == at_site["id"], "the system's escalation is not the site's"
    again = await StreamClient.connect(gateway, admin, "site:RXN01")
    assert [e["id"] for e in (await again.next("snapshot"))["escalations"]] == [at_site["id"]]
    for client in (first_site, system, again):
        await client.close()


async def test_acting_over_the_websocket(stack: Stack, test_secrets: Secrets) -> None:
    nurse = await StreamClient.connect(
        stack.url_of("gateway"), token(test_secrets, Role.ward_nurse, f"ward:{WARD}"), f"ward:{WARD}"
    )
    await nurse.next("snapshot")
    async with httpx.AsyncClient(timeout=30) as client:
        raised = await client.post(
            f"{stack.url_of('command-centre')}/v1/escalations",
            headers=bearer(test_secrets, Role.ward_nurse, f"ward:{WARD}"),
            json={"scope": f"ward:{WARD}", "reason": "two nurses off sick", "severity": "high"},
        )
        assert raised.status_code == 201, raised.text
    ident = raised.json()["id"]
    # acknowledged at once over the socket (before the short test timeout promotes it)
    result = await nurse.act({"id": ident, "action": "acknowledge"})
    assert result["status"] == 200, result
    assert result["escalation"]["status"] == "acknowledged"
    await nurse.until(
        lambda d: (
            (d.get("escalation") or {}).get("id") == ident and d["escalation"]["status"] == "acknowledged"
        )
    )
    await nurse.close()

    display = await StreamClient.connect(
        stack.url_of("gateway"), token(test_secrets, Role.wall_display, "site:RXN01"), "site:RXN01"
    )
    snapshot = await display.next("snapshot")
    assert [e["id"] for e in snapshot["escalations"]] == [ident]
    refused = await display.act({"id": ident, "action": "resolve"})
    assert refused["status"] == 403
    await display.close()


async def test_raising_and_refusals_over_the_websocket(stack: Stack, test_secrets: Secrets) -> None:
    manager = await StreamClient.connect(
        stack.url_of("gateway"), token(test_secrets, Role.site_manager, "site:RXN01"), "site:RXN01"
    )
    await manager.next("snapshot")

    async def act(**message: object) -> dict:
        result = await manager.act(message)
        assert result["ref"] == message.get("ref"), result
        return result

    raised = await act(
        ref="r1", action="raise", scope="site:RXN01", reason="CT scanner down", severity="high"
    )
    assert raised["status"] == 201, raised
    ident = raised["id"]
    assert raised["escalation"]["tier"] == "site" and raised["escalation"]["severity"] == "high"
    await manager.until(lambda d: (d.get("escalation") or {}).get("id") == ident)

    noted = await act(ref=2, action="note", id=ident, text="engineer on the way")
    assert noted["status"] == 200, noted
    resolved = await act(ref="r3", action="resolve", id=ident, text="scanner back")
    assert resolved["status"] == 200 and resolved["escalation"]["status"] == "resolved", resolved

    assert (await act(ref="r4", action="acknowledge"))["status"] == 400  # no id
    assert (await act(ref="r5", action="delete", id=ident))["status"] == 400
    bad_scope = await act(ref="r6", action="raise", scope="ward:NOPE", reason="x")
    assert bad_scope["status"] == 404 and "ward:NOPE" in bad_scope["detail"], bad_scope
    empty = await act(ref="r7", action="raise", scope="site:RXN01", reason="")
    assert empty["status"] == 422 and empty["errors"], empty
    elsewhere = await act(ref="r8", action="raise", scope="site:RXN02", reason="not mine")
    assert elsewhere["status"] == 403, elsewhere
    await manager.close()


async def test_crash_before_the_deadline_promotes_exactly_once(stack: Stack, test_secrets: Secrets) -> None:
    centre = stack.url_of("command-centre")
    nurse = bearer(test_secrets, Role.ward_nurse, f"ward:{WARD}")
    async with httpx.AsyncClient(timeout=30) as client:
        raised = await client.post(
            f"{centre}/v1/escalations",
            headers=nurse,
            json={"scope": f"ward:{WARD}", "reason": "staffing", "key": "staffing"},
        )
        assert raised.status_code == 201, raised.text
        ident = raised.json()["id"]
        stack.stop_service("command-centre", signal.SIGKILL)
        await asyncio.sleep(WARD_ACK_SECONDS + 1)  # the deadline passes while nobody is running
        stack.start_service("command-centre")
        await asyncio.to_thread(stack.wait_ready, "command-centre")

        manager = bearer(test_secrets, Role.site_manager, "site:RXN01")

        async def promoted() -> dict[str, Any] | None:
            response = await client.get(f"{centre}/v1/escalations/{ident}", headers=manager)
            body: dict[str, Any] = response.json()
            return body if body["tier"] == "site" else None

        found = await eventually(promoted, timeout=60)
        await asyncio.sleep(3)  # a few more ticks: nothing more may happen
        again = await client.get(f"{centre}/v1/escalations/{ident}", headers=manager)
        actions = [t["action"] for t in again.json()["timeline"]]
        assert actions.count("promoted") == 1, actions
        assert found["scope"] == "site:RXN01"
