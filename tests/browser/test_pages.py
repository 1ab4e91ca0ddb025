"""The gateway's pages in a real headless Chromium: the wall display connects, shows a pushed
update, and shows an unmistakable stale-data banner when the feed drops; on the tablet view a site
manager acknowledges, annotates, resolves and raises escalations.

Set ICC_SCREENSHOT_DIR to keep a screenshot of each page (docs/screenshots is made this way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from icc.stack import Stack
from shared.auth import Role
from shared.secrets_store import Secrets
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    found = os.environ.get("ICC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is required for the browser tests: `make browser` installs Debian's package")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("ICC_SCREENSHOT_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


async def post_beds(stack: Stack, secrets: Secrets, *beds: tuple[str, str]) -> None:
    async with httpx.AsyncClient() as client:
        for bed, status in beds:
            url = f"{stack.url_of('ingest')}/v1/bed-events"
            response = await post_signed(client, url, secrets, bed_event(bed, status))
            assert response.status_code == 202, response.text


async def raise_escalation(stack: Stack, jwt: str, scope: str, reason: str, severity: str) -> str:
    """Raised through command-centre's REST API, as another user would; its id."""
    async with httpx.AsyncClient(timeout=30) as client:
        raised = await client.post(
            f"{stack.url_of('command-centre')}/v1/escalations",
            headers={"Authorization": f"Bearer {jwt}"},
            json={"scope": scope, "reason": reason, "severity": severity},
        )
    assert raised.status_code == 201, raised.text
    return str(raised.json()["id"])


async def test_wall_display_shows_a_pushed_update_and_goes_stale_when_the_feed_drops(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    jwt = token(test_secrets, Role.wall_display, "site:RXN01")
    await page.goto(f"{stack.url_of('gateway')}/#token={jwt}&scope=site:RXN01")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    assert "token" not in page.url, "the token leaves the address bar once read"
    amu = page.locator('[data-ward="RXN01-AMU"]')
    await expect(amu.locator(".updated")).to_contain_text("no data")

    await post_beds(
        stack,
        test_secrets,
        ("RXN01-AMU-B1-1", "occupied"),
        ("RXN01-AMU-B1-2", "occupied"),
        ("RXN01-AMU-B1-3", "closed"),
    )
    await expect(amu.locator("[data-field=occupied]")).to_have_text("2", timeout=20_000)
    await expect(amu.locator("[data-field=closed]")).to_have_text("1")
    await expect(amu.locator(".avail-num")).not_to_have_text("–")
    await expect(page.locator('[data-site="RXN01"] .opel')).to_be_visible()
    await screenshot(page, "wall-site")

    stack.stop_service("gateway")
    banner = page.locator("#stale-banner")
    await expect(banner).to_be_visible(timeout=30_000)
    await expect(banner).to_contain_text("STALE DATA")
    await expect(page.locator("#status")).to_have_text("stale")
    await screenshot(page, "wall-stale")

    stack.start_service("gateway")
    await expect(page.locator("#status")).to_have_text("live", timeout=60_000)
    await expect(banner).to_be_hidden()
    await page.close()


async def test_system_wall_and_tablet_view_connect(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    await post_beds(stack, test_secrets, ("RXN01-WD10-B1-1", "occupied"), ("RXN02-W1-B1-1", "occupied"))
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    wall = token(test_secrets, Role.wall_display, "system:QXN")
    await page.goto(f"{stack.url_of('gateway')}/#token={wall}&scope=system:QXN")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(page.locator('[data-ward="RXN02-W1"] [data-field=occupied]')).to_have_text(
        "1", timeout=20_000
    )
    await screenshot(page, "wall-system")
    await page.close()

    tablet = await browser.new_page(viewport={"width": 1024, "height": 768}, has_touch=True)
    manager = token(test_secrets, Role.site_manager, "site:RXN01")
    await tablet.goto(f"{stack.url_of('gateway')}/tablet#token={manager}&scope=site:RXN01")
    await expect(tablet.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(tablet.locator("#title")).to_contain_text("Northgate General Hospital")
    await expect(tablet.locator("#raise-scope option").first).to_contain_text("Whole site")
    await expect(tablet.locator("#raise-scope option").nth(1)).to_have_text("Acute Medical Unit")
    await screenshot(tablet, "tablet")
    await tablet.close()


async def test_site_manager_acknowledges_annotates_resolves_and_raises_on_the_tablet(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    centre = stack.url_of("command-centre")
    manager = token(test_secrets, Role.site_manager, "site:RXN01")
    await post_beds(stack, test_secrets, ("RXN01-AMU-B1-1", "occupied"), ("RXN01-AMU-B1-2", "closed"))
    nurse = token(test_secrets, Role.ward_nurse, "ward:RXN01-AMU")
    ident = await raise_escalation(stack, nurse, "ward:RXN01-AMU", "no side rooms left", "high")

    tablet = await browser.new_page(viewport={"width": 1024, "height": 768}, has_touch=True)
    await tablet.goto(f"{stack.url_of('gateway')}/tablet#token={manager}&scope=site:RXN01")
    await expect(tablet.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(tablet.locator('[data-metric="beds_available"]')).not_to_have_text("–", timeout=20_000)
    card = tablet.locator(f'[data-escalation="{ident}"]')
    await expect(card).to_contain_text("no side rooms left")
    await expect(card).to_have_attribute("data-status", "open")

    await card.get_by_role("button", name="Acknowledge").tap()
    await expect(card).to_have_attribute("data-status", "acknowledged", timeout=20_000)
    await expect(card.get_by_role("button", name="Acknowledge")).to_be_disabled()

    await card.get_by_role("button", name="Annotate").click()
    await card.get_by_label("Note").fill("side room on ward 10 cleaned, moving patient")
    await card.get_by_role("button", name="Add note").click()
    await expect(tablet.locator("#feedback")).to_have_text("Note: done", timeout=20_000)

    # raised by hand from the form, at site level, with the keyboard
    await tablet.locator("#raise-scope").select_option("site:RXN01")
    await tablet.locator("#raise-severity").select_option("critical")
    await tablet.locator("#raise-reason").fill("CT scanner down")
    await tablet.locator("#raise-reason").press("Tab")
    await tablet.keyboard.press("Enter")
    site_card = tablet.locator('[data-tier="site"]', has_text="CT scanner down")
    await expect(site_card).to_be_visible(timeout=20_000)
    await expect(site_card).to_contain_text("critical")
    await tablet.evaluate("window.scrollTo(0, 0)")
    await screenshot(tablet, "tablet-escalations")

    await card.get_by_role("button", name="Resolve").click()
    await card.get_by_label("Resolution note (optional)").fill("patient moved")
    await card.get_by_role("button", name="Confirm resolve").click()
    await expect(card).to_have_count(0, timeout=20_000)
    await expect(site_card).to_be_visible()
    await tablet.close()

    # what the tablet did is what command-centre holds, done by the manager's own identity
    async with httpx.AsyncClient(timeout=30) as client:
        record = await client.get(
            f"{centre}/v1/escalations/{ident}", headers={"Authorization": f"Bearer {manager}"}
        )
        site = await client.get(
            f"{centre}/v1/escalations",
            params={"scope": "site:RXN01"},
            headers={"Authorization": f"Bearer {manager}"},
        )
    assert record.json()["status"] == "resolved"
    actions = [(t["actor"], t["action"], t["detail"]) for t in record.json()["timeline"]]
    assert ("test-site_manager", "acknowledged", {}) in [(a, b, {}) for a, b, _ in actions]
    notes = [d for a, b, d in actions if b == "note" and a == "test-site_manager"]
    assert any("side room on ward 10" in str(d) for d in notes), actions
    manual = [e for e in site.json()["escalations"] if e["reason"] == "CT scanner down"]
    assert manual and manual[0]["tier"] == "site" and manual[0]["severity"] == "critical", site.json()


async def test_tablet_greys_out_what_the_token_may_not_do(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    manager = token(test_secrets, Role.site_manager, "site:RXN01")
    await raise_escalation(stack, manager, "site:RXN01", "site-wide staffing", "medium")
    page = await browser.new_page(viewport={"width": 1024, "height": 768})
    nurse = token(test_secrets, Role.ward_nurse, "ward:RXN01-AMU")
    await page.goto(f"{stack.url_of('gateway')}/tablet#token={nurse}&scope=ward:RXN01-AMU")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    # a ward nurse may raise for the ward but not the site; sees no site escalation on a ward scope
    await expect(page.locator("#raise-scope option")).to_have_count(1)
    await expect(page.locator("#raise-scope option").first).to_have_attribute("value", "ward:RXN01-AMU")
    await expect(page.locator("#no-escalations")).to_be_visible()
    await page.close()
