"""A metric's history over HTTP, on the real stack: OPEL levels are series too, and a window in
which nothing changed still says what the value was."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from icc.stack import Stack
from shared.auth import Role
from shared.secrets_store import Secrets
from tests.conftest import eventually
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.e2e

SITE = "RXN01"


async def history(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    points: list[dict[str, Any]] = response.json()["points"]
    return points


def window(start: datetime, end: datetime) -> dict[str, str]:
    return {"from": start.isoformat(), "to": end.isoformat()}


async def test_opel_levels_are_kept_as_history_for_sites_and_the_system(
    stack: Stack, test_secrets: Secrets
) -> None:
    cc = stack.url_of("command-centre")
    site_history = f"{cc}/v1/sites/{SITE}/history"
    system_history = f"{cc}/v1/systems/QXN/history"
    headers = {"Authorization": f"Bearer {token(test_secrets, Role.icb_analyst, 'system:QXN')}"}
    async with httpx.AsyncClient() as client:
        posted = await post_signed(
            client,
            f"{stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event(f"{SITE}-AMU-B1-1", "occupied"),
        )
        assert posted.status_code == 202, posted.text

        async def site_level() -> list[dict[str, Any]]:
            return await history(client, site_history, headers, metric="opel_level")

        level = await eventually(site_level)
        view = (await client.get(f"{cc}/v1/sites/{SITE}/opel", headers=headers)).json()
        assert [p["value"] for p in level] == [view["effective_level"]]
        computed = await history(client, site_history, headers, metric="opel_computed_level")
        assert [p["value"] for p in computed] == [view["computed"]["level"]]

        async def system_level() -> list[dict[str, Any]]:
            return await history(client, system_history, headers, metric="opel_computed_level")

        assert await eventually(system_level)
        assert await history(client, system_history, headers, metric="opel_level")

        unknown = await client.get(site_history, params={"metric": "opel"}, headers=headers)
        assert unknown.status_code == 422 and unknown.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in unknown.json()["errors"]] == ["metric"]


async def test_a_window_without_a_change_gives_the_value_in_force_at_its_start(
    stack: Stack, test_secrets: Secrets
) -> None:
    cc = stack.url_of("command-centre")
    url = f"{cc}/v1/sites/{SITE}/history"
    headers = {"Authorization": f"Bearer {token(test_secrets, Role.site_manager, f'site:{SITE}')}"}
    async with httpx.AsyncClient() as client:
        posted = await post_signed(
            client,
            f"{stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event(f"{SITE}-AMU-B1-1", "closed"),
        )
        assert posted.status_code == 202, posted.text

        async def written() -> list[dict[str, Any]]:
            return await history(client, url, headers, metric="beds_closed")

        (point,) = await eventually(written)
        assert point["value"] == 1
        at = datetime.fromisoformat(point["at"])

        # nothing changed after the point: the window still shows the value it started with
        later = window(at + timedelta(seconds=1), at + timedelta(seconds=2))
        assert await history(client, url, headers, metric="beds_closed", **later) == [point]
        # a point exactly at the start is that value, given once
        assert await history(client, url, headers, metric="beds_closed", **window(at, at)) == [point]
        # before the first point there was no value: nothing to give
        earlier = window(at - timedelta(hours=2), at - timedelta(hours=1))
        assert await history(client, url, headers, metric="beds_closed", **earlier) == []

        backwards = await client.get(
            url, params={"metric": "beds_closed", "from": later["to"], "to": later["from"]}, headers=headers
        )
        assert backwards.status_code == 422
        assert [e["field"] for e in backwards.json()["errors"]] == ["from"]
