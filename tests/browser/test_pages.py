"""The gateway's pages in a real headless Chromium: the wall display connects, shows a pushed
update and a ward that has never reported as missing its bed data, and shows an unmistakable
stale-data banner when the feed drops; a system wall shows every site's OPEL tile at once; on the
tablet view a site manager acknowledges, annotates, resolves and raises escalations; both pages
notice a silent connection, renew their token before it expires and, when the renewal is refused,
ask to sign in again at its expiry.

Set ICC_SCREENSHOT_DIR to keep a screenshot of each page (docs/screenshots is made this way).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from icc.embedded import Broker
from icc.stack import Stack
from shared.auth import Role, mint_token
from shared.organisation import Organisation
from shared.secrets_store import Secrets
from tests.conftest import SAMPLE_ORG, make_settings
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.browser

STALE_SECONDS = 20  # docs/stream.md, Liveness: no frame for this long and the pages say STALE DATA

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


# Sites added to the sample ICB's two to make a system of many sites (names are fictional).
MORE_SITES = (
    "Eastmoor Community Hospital",
    "Harbourside Hospital",
    "Kingsbridge General Hospital",
    "Millbrook Hospital",
    "Oakfield Royal Infirmary",
    "Queensway Hospital",
    "St Aidan's Hospital",
    "Thornbury Memorial Hospital",
    "Westfield District Hospital",
    "Ashgrove Hospital",
    "Brookvale Hospital",
    "Castlegate Hospital",
    "Denholm Cottage Hospital",
)


def grown_icb(folder: Path, sites: int) -> Path:
    """The sample ICB grown to `sites` sites: its own two, then small ones of two wards each."""
    org = yaml.safe_load(SAMPLE_ORG.read_text(encoding="utf-8"))
    first = len(org["sites"]) + 1
    for n, name in enumerate(MORE_SITES[: sites - len(org["sites"])], start=first):
        code = f"RXN{n:02d}"
        org["sites"].append(
            {
                "id": code,
                "name": name,
                "pas_facility": code,
                "ed": {"majors_resus_spaces": 12},
                "wards": [
                    {
                        "id": f"{code}-MAU",
                        "name": "Medical Assessment Unit",
                        "pas_code": "MAU",
                        "specialty": "acute medicine",
                        "type": "assessment",
                        "bays": 2,
                        "beds_per_bay": 6,
                        "side_rooms": 2,
                        "escalation_beds": 2,
                    },
                    {
                        "id": f"{code}-W1",
                        "name": "Ward 1 Medicine",
                        "pas_code": "W1",
                        "specialty": "general medicine",
                        "type": "general_acute",
                        "bays": 3,
                        "beds_per_bay": 6,
                        "side_rooms": 2,
                    },
                ],
            }
        )
    path = folder / "icb.yaml"
    path.write_text(yaml.safe_dump(org, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def twelve_site_stack(
    tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path
) -> Iterator[Stack]:
    """The whole stack on an ICB of twelve sites."""
    settings = make_settings(
        tmp_path, database_url, broker.bootstrap, secrets_file, ICC_ORG_FILE=grown_icb(tmp_path, 12)
    )
    s = Stack(settings)
    s.start_infrastructure()
    s.start_services()
    yield s
    s.stop()


async def post_beds(
    stack: Stack, secrets: Secrets, *beds: tuple[str, str], at: datetime | None = None
) -> None:
    async with httpx.AsyncClient() as client:
        for bed, status in beds:
            url = f"{stack.url_of('ingest')}/v1/bed-events"
            response = await post_signed(client, url, secrets, bed_event(bed, status, at=at))
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


async def declare_opel(stack: Stack, secrets: Secrets, site: str, level: int) -> None:
    """A site manager declares the site's OPEL level (command-centre's REST API)."""
    manager = token(secrets, Role.site_manager, f"site:{site}")
    async with httpx.AsyncClient(timeout=30) as client:
        declared = await client.post(
            f"{stack.url_of('command-centre')}/v1/sites/{site}/opel/declared",
            headers={"Authorization": f"Bearer {manager}"},
            json={"level": level, "reason": "declared at the site's bed meeting"},
        )
    assert declared.status_code == 201, declared.text


async def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait for a condition that the page's events make true."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_wall_display_shows_a_pushed_update_pages_its_wards_and_goes_stale_when_the_feed_drops(
    stack: Stack, test_secrets: Secrets, browser: Browser, org: Organisation
) -> None:
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    await page.clock.install()  # runs in real time until the test moves it on
    jwt = token(test_secrets, Role.wall_display, "site:RXN01")
    await page.goto(f"{stack.url_of('gateway')}/#token={jwt}&scope=site:RXN01")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    assert "token" not in page.url, "the token leaves the address bar once read"
    amu = page.locator('[data-ward="RXN01-AMU"]')
    wards = len(org.sites_by_id["RXN01"].wards)

    reported = datetime.now(UTC) - timedelta(minutes=5)  # when the AMU's feed last reported
    await post_beds(
        stack,
        test_secrets,
        ("RXN01-AMU-B1-1", "occupied"),
        ("RXN01-AMU-B1-2", "occupied"),
        ("RXN01-AMU-B1-3", "closed"),
        ("RXN01-AMU-ESC-1", "closed"),
        at=reported,
    )
    await post_beds(stack, test_secrets, ("RXN01-WD10-B1-1", "occupied"))
    await expect(amu.locator("[data-field=occupied]")).to_have_text("2", timeout=20_000)
    await expect(amu.locator("[data-field=closed]")).to_have_text("2")
    await expect(amu.locator(".avail-num")).to_have_text("40")  # of 44
    await expect(amu).to_have_attribute("data-level", "ok")
    hh_mm = reported.astimezone(ZoneInfo("Europe/London")).strftime("%H:%M")
    await expect(amu.locator(".updated")).to_have_text(re.compile(rf"^last bed event (\d+ \w+ )?{hh_mm}$"))
    # the AMU has 4 escalation beds, one closed; WD10 2 (the site's others are in wards never reported)
    await expect(amu.locator("[data-field=escalation_beds_open]")).to_have_text("3")
    tile = page.locator('[data-site-tile="RXN01"]')
    await expect(tile.locator("[data-figure=escalation]")).to_have_text("5", timeout=20_000)
    await expect(tile.locator(".opel")).to_be_in_viewport(ratio=1)

    # a ward whose feeds have never reported shows its data missing, not 20 free beds, and the
    # site's totals leave it out: the AMU's 40 available and WD10's 29 (of 30)
    sau = page.locator('[data-ward="RXN01-SAU"]')
    await expect(sau.locator(".level")).to_have_text("NO BED DATA")
    await expect(sau).to_have_attribute("data-level", "none")
    await expect(sau.locator(".updated")).to_have_text("no bed data – ward has never reported")
    await expect(sau.locator(".avail-num")).to_have_text("–")
    await expect(sau.locator("[data-field=occupied]")).to_have_text("–")
    await expect(sau.locator(".bar")).to_have_attribute("aria-label", "no bed data")
    await expect(tile.locator(".reporting")).to_have_text(f"2 of {wards} wards reporting")
    await expect(tile.locator("[data-figure=available]")).to_have_text("69")
    await expect(tile.locator("[data-figure=total]")).to_have_text("74")
    quality = page.locator('[data-site="RXN01"] .data-quality')
    await expect(quality).to_have_text(f"Data: {wards - 2} wards without bed data")
    await screenshot(page, "wall-site")

    # on a smaller screen the site's wards do not all fit: a page of them at a time, in turn
    await page.set_viewport_size({"width": 1280, "height": 720})
    label = page.locator(".ward-page")
    await expect(label).to_have_text(re.compile(rf"^wards 1–(\d+) of {wards}$"))
    shown = re.fullmatch(rf"wards 1–(\d+) of {wards}", await label.inner_text())
    assert shown is not None
    per_page = int(shown.group(1))
    assert 0 < per_page < wards
    await expect(page.locator(".ward:visible")).to_have_count(per_page)
    for card in await page.locator(".ward:visible").all():
        await expect(card).to_be_in_viewport(ratio=1)
    await expect(amu).to_be_visible()
    await page.clock.fast_forward("00:16")
    await expect(label).to_have_text(re.compile(rf"^wards {per_page + 1}–\d+ of {wards}$"))
    await expect(amu).to_be_hidden()
    for card in await page.locator(".ward:visible").all():
        await expect(card).to_be_in_viewport(ratio=1)
    await page.set_viewport_size({"width": 1600, "height": 1000})

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
    for site in ("RXN01", "RXN02"):
        tile = page.locator(f'[data-site-tile="{site}"]')
        await expect(tile.locator("[data-figure=pct]")).not_to_have_text("–", timeout=20_000)
        await expect(tile.locator(".opel")).to_be_in_viewport(ratio=1)
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
    # beds available counts the wards nobody has reported on (SAU among them) as free: it says so
    await expect(tablet.locator("#data-quality")).to_contain_text(
        re.compile(r"^Data: \d+ wards have never reported their beds \(counted as free\)")
    )
    card = tablet.locator(f'[data-escalation="{ident}"]')
    await expect(card).to_contain_text("no side rooms left")
    await expect(card).to_have_attribute("data-status", "open")

    # each card's buttons are named after its escalation, for a screen reader's list of buttons
    title = "no side rooms left · ward:RXN01-AMU"
    await expect(card.get_by_role("button", name="Acknowledge")).to_have_accessible_name(
        f"Acknowledge {title}"
    )
    await expect(card.get_by_role("button", name="Resolve")).to_have_accessible_name(f"Resolve {title}")

    await card.get_by_role("button", name="Acknowledge").tap()
    await expect(card).to_have_attribute("data-status", "acknowledged", timeout=20_000)
    await expect(card.get_by_role("button", name="Acknowledge")).to_be_disabled()

    annotate = card.get_by_role("button", name="Annotate")
    await annotate.click()
    await card.get_by_role("textbox", name="Note").fill("side room on ward 10 cleaned, moving patient")
    await card.get_by_role("button", name="Add note").press("Enter")
    await expect(tablet.locator("#feedback")).to_have_text("Note: done", timeout=20_000)
    await expect(annotate).to_be_focused()  # back where the keyboard user started

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
    await card.get_by_role("textbox", name="Resolution note (optional)").fill("patient moved")
    await card.get_by_role("button", name="Confirm resolve").press("Enter")
    await expect(card).to_have_count(0, timeout=20_000)
    await expect(site_card).to_be_visible()
    # the resolved card went with the focus in it: the focus moves on to the next card
    await expect(site_card.get_by_role("button", name="Acknowledge")).to_be_focused()
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


async def test_a_system_wall_of_twelve_sites_shows_every_site_tile_and_the_opel_trend(
    twelve_site_stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    stack = twelve_site_stack
    sites = [f"RXN{n:02d}" for n in range(1, 13)]
    await post_beds(
        stack,
        test_secrets,
        ("RXN01-AMU-B1-1", "occupied"),
        ("RXN02-MAU-B1-1", "occupied"),
        *[(f"{site}-MAU-B1-1", "occupied") for site in sites[2:]],
        *[(f"{site}-W1-B1-{bed}", "closed") for site in sites[5:8] for bed in (1, 2, 3)],
    )
    for site in sites[2:10]:  # more open escalations than the wall lists
        nurse = token(test_secrets, Role.ward_nurse, f"ward:{site}-MAU")
        await raise_escalation(stack, nurse, f"ward:{site}-MAU", "no side rooms left", "high")

    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    await page.clock.install()  # runs in real time until the test moves it on
    wall = token(test_secrets, Role.wall_display, "system:QXN")
    await page.goto(f"{stack.url_of('gateway')}/#token={wall}&scope=system:QXN")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(page.locator("[data-site-tile]")).to_have_count(12)
    await expect(page.locator("#escalation-list")).to_contain_text(
        "+ 3 more open escalations", timeout=20_000
    )
    for site in sites:
        tile = page.locator(f'[data-site-tile="{site}"]')
        await expect(tile.locator("[data-figure=pct]")).not_to_have_text("–", timeout=20_000)
        await expect(tile).to_be_in_viewport(ratio=1)

    # a level change shows its direction on the tile (these sites have too little data for a
    # computed level, so a site manager declares one, then a higher one)
    rxn02 = page.locator('[data-site-tile="RXN02"] .opel')
    await declare_opel(stack, test_secrets, "RXN02", 2)
    await expect(rxn02.locator("b")).to_have_text("2", timeout=20_000)
    await declare_opel(stack, test_secrets, "RXN02", 4)
    await expect(rxn02.locator("b")).to_have_text("4 ▲", timeout=20_000)
    await expect(rxn02).to_contain_text("from 2 at")
    await expect(rxn02).to_have_attribute("aria-label", re.compile("^OPEL 4, up from 2 at"))
    await expect(page.locator('[data-site-tile="RXN01"]')).to_be_in_viewport(ratio=1)
    await screenshot(page, "wall-system")

    # a wall opened after the change shows it too: the change comes with the site's summary
    later = await browser.new_page(viewport={"width": 1600, "height": 1000})
    await later.goto(f"{stack.url_of('gateway')}/#token={wall}&scope=system:QXN")
    await expect(later.locator('[data-site-tile="RXN02"] .opel b')).to_have_text("4 ▲", timeout=20_000)
    await expect(later.locator('[data-site-tile="RXN02"] .opel')).to_contain_text("from 2 at")
    await later.close()

    # below them, one site's wards at a time, as many as fit on the screen, page after page
    amu = page.locator('[data-ward="RXN01-AMU"]')
    await expect(page.locator('[data-site="RXN02"]')).to_be_hidden()
    await expect(amu).to_be_in_viewport(ratio=1)
    for card in await page.locator(".ward:visible").all():
        await expect(card).to_be_in_viewport(ratio=1)
    await page.clock.fast_forward("00:16")
    await expect(amu).to_be_hidden()
    for card in await page.locator(".ward:visible").all():
        await expect(card).to_be_in_viewport(ratio=1)

    # an hour without a further change, and the arrow goes
    await page.clock.fast_forward("01:00:00")
    await expect(rxn02.locator("b")).to_have_text("4", timeout=5_000)
    await expect(rxn02.locator(".trend")).to_have_text("")
    await page.close()


async def test_tablet_gives_up_a_silent_connection_and_says_an_action_was_not_confirmed(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    nurse = token(test_secrets, Role.ward_nurse, "ward:RXN01-AMU")
    ident = await raise_escalation(stack, nurse, "ward:RXN01-AMU", "no side rooms left", "high")
    manager = token(test_secrets, Role.site_manager, "site:RXN01")
    tablet = await browser.new_page(viewport={"width": 1024, "height": 768}, has_touch=True)
    sockets: list[WebSocket] = []
    tablet.on("websocket", lambda ws: sockets.append(ws))
    await tablet.goto(f"{stack.url_of('gateway')}/tablet#token={manager}&scope=site:RXN01")
    status, banner = tablet.locator("#status"), tablet.locator("#stale-banner")
    await expect(status).to_have_text("live", timeout=20_000)
    ack = tablet.locator(f'[data-escalation="{ident}"]').get_by_role("button", name="Acknowledge")
    await expect(ack).to_be_enabled()

    # A stopped gateway keeps its sockets open and answers nothing: no close ever reaches the page.
    gateway = stack.processes["gateway"]
    gateway.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        await ack.click()
        await expect(tablet.locator("#feedback")).to_have_text(
            "Acknowledge not confirmed — retry", timeout=12_000
        )
        await expect(ack).to_be_enabled()
        left = STALE_SECONDS + 2 - (time.monotonic() - stopped_at)
        await expect(banner).to_be_visible(timeout=max(left, 0.5) * 1000)
        await expect(banner).to_contain_text("reconnecting")
        await until(lambda: len(sockets) >= 2, timeout=5)  # gave the silent socket up, tries anew
    finally:
        gateway.send_signal(signal.SIGCONT)
    await expect(status).to_have_text("live", timeout=60_000)
    await expect(banner).to_be_hidden()
    await tablet.close()


def short_tokens(secrets: Secrets, lifetime: int, auth_time: int | None = None) -> dict[Role, str]:
    """A wall's and a site manager's token for site:RXN01 that expire after `lifetime` s."""
    return {
        role: mint_token(
            secrets.jwt_secret,
            subject=f"test-{role.value}",
            role=role,
            scopes=["site:RXN01"],
            ttl_seconds=lifetime,
            auth_time=auth_time,
        )
        for role in (Role.wall_display, Role.site_manager)
    }


async def test_pages_renew_their_token_before_it_expires_and_stay_live(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    lifetime = 20
    short = short_tokens(test_secrets, lifetime)
    gateway = stack.url_of("gateway")
    wall = await browser.new_page(viewport={"width": 1600, "height": 1000})
    sockets: list[WebSocket] = []
    wall.on("websocket", lambda ws: sockets.append(ws))
    opened = time.monotonic()
    await wall.goto(f"{gateway}/#token={short[Role.wall_display]}&scope=site:RXN01")
    tablet = await browser.new_page(viewport={"width": 1024, "height": 768})
    await tablet.goto(f"{gateway}/tablet#token={short[Role.site_manager]}&scope=site:RXN01")
    await expect(wall.locator("#status")).to_have_text("live", timeout=20_000)
    await expect(tablet.locator("#status")).to_have_text("live", timeout=20_000)

    await asyncio.sleep(max(0.0, 2 * lifetime - (time.monotonic() - opened)))  # twice its lifetime
    for page, stored, first in (
        (wall, "icc.token", short[Role.wall_display]),
        (tablet, "icc.tablet.token", short[Role.site_manager]),
    ):
        await expect(page.locator("#status")).to_have_text("live")
        await expect(page.locator("#stale-banner")).to_be_hidden()
        await expect(page.locator("#login")).to_be_hidden()
        renewed = await page.evaluate(f"sessionStorage.getItem({stored!r})")
        assert renewed and renewed != first, "the page keeps the renewed token"
    await post_beds(stack, test_secrets, ("RXN01-AMU-B1-1", "occupied"))
    amu = wall.locator('[data-ward="RXN01-AMU"] [data-field=occupied]')
    await expect(amu).to_have_text("1", timeout=20_000)
    assert len(sockets) == 1, "renewed on the open connection, not by reconnecting"
    await wall.close()
    await tablet.close()


async def test_pages_ask_to_sign_in_again_when_the_token_expires_and_keep_the_last_data(
    stack: Stack, test_secrets: Secrets, browser: Browser
) -> None:
    await post_beds(stack, test_secrets, ("RXN01-AMU-B1-1", "occupied"))
    lifetime = 20
    expires = time.time() + lifetime
    # sessions older than the maximum, so that the gateway refuses to renew their tokens
    began = int(time.time() - stack.settings.max_session_hours * 3600) - 60
    short = short_tokens(test_secrets, lifetime, auth_time=began)
    gateway = stack.url_of("gateway")
    wall = await browser.new_page(viewport={"width": 1600, "height": 1000})
    await wall.goto(f"{gateway}/#token={short[Role.wall_display]}&scope=site:RXN01")
    tablet = await browser.new_page(viewport={"width": 1024, "height": 768})
    await tablet.goto(f"{gateway}/tablet#token={short[Role.site_manager]}&scope=site:RXN01")
    amu = wall.locator('[data-ward="RXN01-AMU"] [data-field=occupied]')
    await expect(amu).to_have_text("1", timeout=20_000)
    await expect(tablet.locator("#status")).to_have_text("live", timeout=20_000)

    await asyncio.sleep(max(0.0, expires - time.time()) + 1)
    # however the connection ends (closed at expiry, a gateway restart), the next one is refused
    stack.stop_service("gateway")
    stack.start_service("gateway")
    for page, stored in ((wall, "icc.token"), (tablet, "icc.tablet.token")):
        reason = page.locator("#login-reason")
        await expect(reason).to_contain_text("expired at", timeout=60_000)
        await expect(reason).to_contain_text("sign in again")
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#stale-banner")).to_contain_text("not reconnecting: token expired")
        assert await page.evaluate(f"sessionStorage.getItem({stored!r})") is None, (
            "the expired token is dropped"
        )
    await expect(wall.locator("#notice")).to_contain_text("Token expired at")
    await expect(amu).to_have_text("1")  # the last data stays up, marked stale
    await expect(wall.locator(".ward:visible").first).to_be_in_viewport()  # (a page of the wards)
    await expect(tablet.locator('[data-metric="beds_available"]')).to_be_visible()
    await wall.close()
    await tablet.close()
