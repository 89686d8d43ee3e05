"""The console end to end in a real browser: Debian's Chromium, headless, driven by Playwright,
against a live ``ingest serve`` started here, with events sent by the real Segment SDK.

Skipped where Chromium is not installed (``apt-get install chromium``; the README says so).
With ``INGEST_CONSOLE_SCREENSHOTS=<dir>`` it also saves the screenshots the README shows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.live import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

if CHROMIUM is not None:  # imported only where it can run
    from playwright.sync_api import Page, expect, sync_playwright

INGEST = [sys.executable, "-m", "ingest.cli"]
EMAIL = "Grace.Hopper@Example.org"
SHOTS = os.environ.get("INGEST_CONSOLE_SCREENSHOTS")


@pytest.fixture(name="server")
def _server(db_dsn: str, geoip_db: Path) -> Iterator[tuple[str, str, str]]:
    """A live server: its base URL, an organization's secret key, and the database."""
    with live_server(db_dsn, geoip_db, "--workers", "1") as (base, secret):
        yield base, secret, db_dsn


def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    # On its own thread: Playwright's sync API keeps an event loop running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def _shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture(name="page")
def _page() -> Iterator[Page]:
    assert CHROMIUM is not None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            browser.close()


def _sign_in(page: Page, base: str, key: str) -> None:
    page.goto(base + "/console/")
    expect(page).to_have_url(base + "/console/sign-in")
    page.get_by_label("Secret key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()


def test_a_partner_signs_in_sets_up_watches_events_erases_and_signs_out(
    server: tuple[str, str, str], page: Page
) -> None:
    base, secret, dsn = server
    from segment.analytics.client import Client as SegmentClient

    # A wrong key: a clear message, still on the sign-in page.
    page.goto(base + "/console/")
    _shot(page, "sign-in")
    page.get_by_label("Secret key").fill("isk_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not a working secret key")

    _sign_in(page, base, secret)
    # The key is nowhere in the browser: not in a cookie (HttpOnly or not), not in storage.
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["ingest_console"]
    assert cookies[0]["httpOnly"]
    assert cookies[0]["sameSite"] == "Strict"
    assert secret not in json.dumps(cookies)
    assert page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == (
        "{}{}"
    )

    # A project and its first write key, shown once with a copy button.
    page.get_by_label("Name").fill("Web shop")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name="New write key")).to_be_visible()
    write_key = page.get_by_label("The new key").input_value()
    assert write_key.startswith("iwk_")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    _shot(page, "project")
    page.get_by_role("link", name="Settings and keys").click()
    expect(page.get_by_role("heading", name="Write keys")).to_be_visible()
    expect(page.get_by_label("The new key")).to_have_count(0)  # shown once

    # A second write key, created from the keyboard alone.
    page.get_by_role("button", name="Create write key").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New write key")).to_be_visible()

    # The live view: events sent by the Segment SDK appear within a second or two.
    page.get_by_role("link", name="Live events").first.click()
    expect(page.get_by_role("status")).to_contain_text("Live")
    segment = SegmentClient(write_key, host=base, sync_mode=True)
    segment.identify("grace", {"email": EMAIL, "plan": "pro"})
    segment.track("grace", "Order Completed", {"total": 42})
    segment.flush()
    expect(page.locator("#events li")).to_have_count(2)
    expect(page.locator("#events li").first).to_contain_text("Order Completed")
    # A refused event shows with its reason.
    refused = httpx.post(
        base + "/v1/batch",
        json={"batch": [{"type": "identify", "userId": EMAIL}]},
        auth=(write_key, ""),
    )
    assert refused.status_code == 200
    expect(page.locator("#events li", has_text="user_id_is_email")).to_be_visible()
    # Expanded, an event is the stored envelope: the email as its SHA-256 only.
    identify = page.locator('#events li[data-type="identify"]')
    identify.locator("summary").click()
    expect(identify.locator("pre")).to_contain_text('"email_sha256": "')
    _shot(page, "live-events")
    # Filter by type, then pause: nothing new is shown until resumed.
    page.get_by_label("Type").select_option("track")
    expect(page.locator("#events li:visible")).to_have_count(1)
    page.get_by_label("Type").select_option("")
    page.get_by_role("button", name="Pause").click()
    segment.track("grace", "While Paused")
    segment.flush()
    time.sleep(2)  # two poll intervals would have shown it
    expect(page.locator("#events li", has_text="While Paused")).to_have_count(0)
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#events li", has_text="While Paused")).to_be_visible()
    assert EMAIL not in page.content()
    assert EMAIL.lower() not in page.content()

    # Data-subject request: look up by the raw email, export, erase with confirmation.
    page.get_by_role("link", name="Data-subject requests").first.click()
    page.get_by_label("Look up by").select_option("email")
    page.get_by_label("Value").fill(EMAIL)
    page.get_by_role("button", name="Look up").click()
    # The email is on the identify call only; erasing it reaches the user it links to.
    expect(page.get_by_text("1 stored event")).to_be_visible()
    assert EMAIL.lower() not in page.url.lower()
    assert EMAIL.lower() not in page.content().lower()
    _shot(page, "data-subject-request")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download export (NDJSON)").click()
    exported = Path(download.value.path()).read_text().splitlines()
    assert len(exported) == 1
    page.get_by_role("button", name="Erase…").click()
    expect(page.get_by_role("heading", name="Erase email with SHA-256")).to_be_visible()
    page.get_by_role("button", name="Erase this person").click()
    expect(page.get_by_role("heading", name="Erasure receipt")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("The person is erased")
    _shot(page, "erasure-receipt")
    assert _sql(dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 0

    # The audit log has it, as a keyed digest.
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("td", has_text="subject.erase")).to_be_visible()
    _shot(page, "audit-log")
    page.get_by_role("link", name="Operations").click()
    expect(page.get_by_text("GeoIP database")).to_be_visible()
    _shot(page, "operations")

    # Readable on a phone.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(base + "/console/projects")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390 + 1, width
    page.set_viewport_size({"width": 1280, "height": 800})

    # Sign out: the session is gone on the server too.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    assert _sql(dsn, "SELECT count(*) AS n FROM console_sessions")[0]["n"] == 0
    page.goto(base + "/console/projects")
    expect(page).to_have_url(base + "/console/sign-in")


def test_an_expired_session_asks_to_sign_in_again(server: tuple[str, str, str], page: Page) -> None:
    base, secret, dsn = server
    _sign_in(page, base, secret)
    _sql(dsn, "UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    page.reload()
    expect(page).to_have_url(base + "/console/sign-in?expired=1")
    expect(page.get_by_role("status")).to_contain_text("Your session ended")


def test_a_form_posted_from_another_site_changes_nothing(
    server: tuple[str, str, str], page: Page
) -> None:
    base, secret, dsn = server
    _sign_in(page, base, secret)
    evil = (
        "<form id=f method=post action='" + base + "/console/projects'>"
        "<input name=name value=Evil><input name=csrf value=guess></form>"
        "<script>document.getElementById('f').submit()</script>"
    ).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(evil)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        # localhost is another site than 127.0.0.1: the Strict cookie stays home.
        page.goto(f"http://localhost:{site.server_address[1]}/")
        page.wait_for_url(base + "/console/**")
    finally:
        site.shutdown()
        site.server_close()
    assert _sql(dsn, "SELECT count(*) AS n FROM projects WHERE name = 'Evil'")[0]["n"] == 0
    # Still signed in: the attack did not sign the user out either.
    page.goto(base + "/console/projects")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
