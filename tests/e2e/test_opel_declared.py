"""Declaring and withdrawing OPEL levels over HTTP, on the real stack: who may, where, and how soon
the declaration shows beside the computed level."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from icc.embedded import Broker
from icc.stack import Stack
from shared import topics
from shared.auth import Role
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.e2e

SITE = "RXN01"
SLOW_TICK = 120.0  # far longer than any wait below: what shows in time did not wait for a tick


@pytest.fixture
def slow_tick_stack(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Iterator[Stack]:
    stack = Stack(
        make_settings(
            tmp_path, database_url, broker.bootstrap, secrets_file, ICC_STATE_TICK_SECONDS=SLOW_TICK
        )
    )
    stack.start_infrastructure()
    stack.start_services()
    yield stack
    stack.stop()


def auth(secrets: Secrets, role: Role, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(secrets, role, scope)}"}


async def opel_view(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    response = await client.get(url, headers=headers)
    if response.status_code == 404:  # no state yet
        return None
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def view_where(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], check: Any, timeout: float = 10.0
) -> dict[str, Any]:
    async def matching() -> dict[str, Any] | None:
        view = await opel_view(client, url, headers)
        return view if view is not None and check(view) else None

    return await eventually(matching, timeout=timeout)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


async def test_a_declared_level_shows_at_once_beside_the_computed_one_and_withdrawing_it_restores_it(
    slow_tick_stack: Stack, test_secrets: Secrets
) -> None:
    cc = slow_tick_stack.url_of("command-centre")
    declared_url = f"{cc}/v1/sites/{SITE}/opel/declared"
    site_opel = f"{cc}/v1/sites/{SITE}/opel"
    manager = auth(test_secrets, Role.site_manager, f"site:{SITE}")
    async with httpx.AsyncClient() as client:
        posted = await post_signed(
            client,
            f"{slow_tick_stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event(f"{SITE}-AMU-B1-1", "occupied"),
        )
        assert posted.status_code == 202, posted.text
        before = await view_where(client, site_opel, manager, lambda v: True, timeout=30)
        assert before["declared"] is None
        computed = before["computed"]
        assert computed["breakdown"] and computed["profile_id"]
        assert before["effective_level"] == computed["level"]

        # a reason of spaces only is refused, by the rule the stored declaration is read back with
        blank = assert_problem(
            await client.post(declared_url, json={"level": 4, "reason": "   "}, headers=manager), 422
        )
        assert [e["field"] for e in blank["errors"]] == ["reason"]

        expires = datetime.now(UTC) + timedelta(hours=4)
        body = {"level": 4, "reason": "Two ambulances held over 60 minutes; ICU full", "expires_at": expires}
        declared = await client.post(declared_url, json=_json(body), headers=manager)
        assert declared.status_code == 201, declared.text
        record = declared.json()
        assert record["scope"] == f"site:{SITE}" and record["level"] == 4
        assert record["declared_by"] == "test-site_manager"
        assert record["reason"] == body["reason"]
        assert datetime.fromisoformat(record["expires_at"]) == expires
        declared_at = datetime.fromisoformat(record["declared_at"])
        assert abs(datetime.now(UTC) - declared_at) < timedelta(minutes=1)

        # no tick is due for minutes: the declaration reaches the live state because it was made
        shown = await view_where(client, site_opel, manager, lambda v: v["declared"] is not None)
        shown_declared = shown["declared"]
        assert {k: shown_declared[k] for k in ("level", "reason", "declared_by")} == {
            "level": 4,
            "reason": body["reason"],
            "declared_by": "test-site_manager",
        }
        assert datetime.fromisoformat(shown_declared["declared_at"]) == declared_at
        assert datetime.fromisoformat(shown_declared["expires_at"]) == expires
        assert shown["effective_level"] == 4
        assert shown["computed"] == computed  # kept beside the declaration, never written over
        state = await client.get(f"{cc}/v1/sites/{SITE}/state", headers=manager)
        assert state.json()["opel"]["declared"]["level"] == 4

        withdrawn = await client.delete(declared_url, headers=manager)
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json() == {"withdrawn": [record["id"]]}
        after = await view_where(client, site_opel, manager, lambda v: v["declared"] is None)
        assert after["effective_level"] == computed["level"]
        # nothing is in force any more: withdrawing again is refused, not answered 200
        again = assert_problem(await client.delete(declared_url, headers=manager), 404)
        assert f"site:{SITE}" in again["detail"]


async def test_who_may_declare_where(slow_tick_stack: Stack, test_secrets: Secrets) -> None:
    cc = slow_tick_stack.url_of("command-centre")
    body = {"level": 3, "reason": "Surge in ambulance arrivals"}
    system_url = f"{cc}/v1/systems/QXN/opel/declared"
    async with httpx.AsyncClient() as client:
        # a role that may not declare at all, with the site in its scope
        wall = assert_problem(
            await client.post(
                f"{cc}/v1/sites/{SITE}/opel/declared",
                json=body,
                headers=auth(test_secrets, Role.wall_display, f"site:{SITE}"),
            ),
            403,
        )
        assert wall["title"] == "Cannot declare OPEL"
        analyst = assert_problem(
            await client.post(
                system_url, json=body, headers=auth(test_secrets, Role.icb_analyst, "system:QXN")
            ),
            403,
        )
        assert analyst["title"] == "Cannot declare OPEL"
        # a site manager declares its site's level, never the system's, nor another site's
        manager_on_system = assert_problem(
            await client.post(
                system_url, json=body, headers=auth(test_secrets, Role.site_manager, "system:QXN")
            ),
            403,
        )
        assert "system coordination centre" in manager_on_system["detail"]
        other_site = assert_problem(
            await client.post(
                f"{cc}/v1/sites/{SITE}/opel/declared",
                json=body,
                headers=auth(test_secrets, Role.site_manager, "site:RXN02"),
            ),
            403,
        )
        assert other_site["title"] == "Outside your scope"
        other_site_withdraw = assert_problem(
            await client.delete(
                f"{cc}/v1/sites/{SITE}/opel/declared",
                headers=auth(test_secrets, Role.site_manager, "site:RXN02"),
            ),
            403,
        )
        assert other_site_withdraw["title"] == "Outside your scope"
        # the ICB's system coordination centre declares the system's level, not a trust's
        coordinator = auth(test_secrets, Role.system_coordinator, "system:QXN")
        on_site = assert_problem(
            await client.post(f"{cc}/v1/sites/{SITE}/opel/declared", json=body, headers=coordinator), 403
        )
        assert on_site["title"] == "Cannot declare OPEL"
        # a site has reported, so the system has something to fold
        posted = await post_signed(
            client,
            f"{slow_tick_stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event(f"{SITE}-AMU-B1-2", "occupied"),
        )
        assert posted.status_code == 202, posted.text
        await view_where(client, f"{cc}/v1/sites/{SITE}/opel", coordinator, lambda v: True, timeout=30)
        declared = await client.post(system_url, json=body, headers=coordinator)
        assert declared.status_code == 201, declared.text
        assert declared.json()["declared_by"] == "test-system_coordinator"
        # as promptly as a site's, although the system stage is not due to run for minutes
        shown = await view_where(
            client,
            f"{cc}/v1/systems/QXN/opel",
            coordinator,
            lambda v: (v.get("declared") or {}).get("level") == 3,
        )
        assert shown["effective_level"] == 3
        assert (await client.delete(system_url, headers=coordinator)).status_code == 200


def _json(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in body.items()}


async def test_a_declaration_lapses_when_it_expires_and_an_unreadable_stored_one_is_passed_over(
    stack: Stack, test_secrets: Secrets, db: asyncpg.Connection
) -> None:
    # a reason of spaces only, as stored before the API refused it: it must not stop RXN02 loading
    # nor the clock that makes RXN01's declaration lapse
    await db.execute(
        "INSERT INTO declared_opel (scope, level, reason, declared_by, declared_at) "
        "VALUES ('site:RXN02', 4, '   ', 'someone', now())"
    )
    cc = stack.url_of("command-centre")
    manager = auth(test_secrets, Role.site_manager, f"site:{SITE}")
    other = auth(test_secrets, Role.site_manager, "site:RXN02")
    async with httpx.AsyncClient() as client:
        for bed in (f"{SITE}-AMU-B1-1", "RXN02-W1-B1-1"):
            posted = await post_signed(
                client, f"{stack.url_of('ingest')}/v1/bed-events", test_secrets, bed_event(bed, "occupied")
            )
            assert posted.status_code == 202, posted.text
        unreadable = await view_where(client, f"{cc}/v1/sites/RXN02/opel", other, lambda v: True, timeout=30)
        assert unreadable["declared"] is None
        assert unreadable["effective_level"] == unreadable["computed"]["level"]
        before = await view_where(client, f"{cc}/v1/sites/{SITE}/opel", manager, lambda v: True, timeout=30)

        expires = datetime.now(UTC) + timedelta(seconds=8)
        declared = await client.post(
            f"{cc}/v1/sites/{SITE}/opel/declared",
            json={"level": 4, "reason": "Internal critical incident", "expires_at": expires.isoformat()},
            headers=manager,
        )
        assert declared.status_code == 201, declared.text
        await view_where(client, f"{cc}/v1/sites/{SITE}/opel", manager, lambda v: v["effective_level"] == 4)
        lapsed = await view_where(
            client, f"{cc}/v1/sites/{SITE}/opel", manager, lambda v: v["declared"] is None, timeout=30
        )
        assert datetime.now(UTC) >= expires
        assert lapsed["effective_level"] == before["computed"]["level"]
        # an expired declaration is not withdrawn again
        expired = assert_problem(
            await client.delete(f"{cc}/v1/sites/{SITE}/opel/declared", headers=manager), 404
        )
        assert expired["title"] == "Nothing declared"
    withdrawn = await db.fetchval("SELECT count(*) FROM declared_opel WHERE withdrawn_at IS NOT NULL")
    assert withdrawn == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", topics.DLQ.name) == 0
