"""The admin console in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download). One operator's session against a real gateway and the upstream emulator: a wrong key, the
right one, a cookie added, probed, reset and then expired by the site, a key created and revoked, a
message sent in "Try it"; no console error, no failed request, and the cookie nowhere in the page or
in what the browser received.

Screenshots of each screen go to tests/artifacts/console/; with UPDATE_SCREENSHOTS=1 the accounts
screen also becomes docs/console.png, the README's picture.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, expect, sync_playwright

from tests.conftest import LEAKS, Emulator, Gateway, gateway_settings
from tests.processes import ROOT

ADMIN = "sk-admin-console-e2e-0123456789"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
SCREENSHOT = ROOT / "docs" / "console.png"
# The machine has no network: nothing in the background may try to reach one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-pings",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class BrowserLog:
    """Everything the page said or fetched that would mean something went wrong."""

    def __init__(self, page: Page, origin: str) -> None:
        self.origin = origin
        self.console: list[str] = []
        self.failed: list[str] = []
        self.bad_status: list[str] = []
        self.urls: list[str] = []
        self.responses: list[Response] = []
        self.expected_refusals = 0  # the deliberate wrong-key sign-in
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.on("requestfailed", self._failed)
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        self.responses.append(response)
        if response.status >= 400:
            self.bad_status.append(f"{response.request.method} {response.url}: {response.status}")

    def unexpected(self) -> tuple[list[str], list[str], list[str]]:
        wrong_key = f"POST {self.origin}/admin/session: 401"
        statuses = list(self.bad_status)
        for _ in range(self.expected_refusals):
            if wrong_key in statuses:
                statuses.remove(wrong_key)
        # Chromium reports each >= 400 answer to a fetch as a console error: the refusal above too.
        console = list(self.console)
        for _ in range(self.expected_refusals):
            refusal = next((m for m in console if "401" in m and "Failed to load resource" in m), None)
            if refusal is not None:
                console.remove(refusal)
        return console, self.failed, statuses


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def row(page: Page, table: str, key: str) -> Any:
    return page.locator(f"#{table} tbody tr", has_text=key)


def test_the_console_end_to_end(start_gateway: Any, emulator: Emulator, browser: Browser) -> None:
    tag = f"console-e2e-{secrets.token_hex(12)}"
    added_cookie = f"session={tag}"
    standing = f"session=console-standing-{secrets.token_hex(12)}"
    gw: Gateway = start_gateway(
        gateway_settings(emulator, [standing], ADMIN_KEY=ADMIN, SESSION_CHECK_INTERVAL="0.5"),
        name="console",
    )
    context = browser.new_context(viewport={"width": 1360, "height": 900}, service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    log = BrowserLog(page, gw.url)
    try:
        page.goto(f"{gw.url}/admin/")
        key_field = page.get_by_label("Admin key", exact=True)
        expect(key_field).to_be_visible()
        shot(page, "1-sign-in")

        # A wrong key is told so.
        key_field.fill("sk-admin-wrong-key-00000000000")
        log.expected_refusals += 1
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong admin key.")
        shot(page, "2-wrong-key")

        # The right one, with the keyboard.
        key_field.fill(ADMIN)
        key_field.press("Enter")
        expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
        expect(page.locator("#credentials tbody tr")).to_have_count(1)

        # Add a cookie: its row appears.
        page.get_by_label("Cookies", exact=True).fill(added_cookie)
        page.get_by_role("button", name="Add", exact=True).click()
        status = page.locator("#accounts-status")
        expect(status).to_contain_text("Added ")
        added_id = status.inner_text().removeprefix("Added ").rstrip(".")
        added_row = row(page, "credentials", added_id)
        expect(added_row).to_have_count(1)
        expect(added_row.locator(".state")).to_have_text("active")

        # Probe it, then reset it.
        page.get_by_role("button", name=f"Probe {added_id}").click()
        expect(status).to_have_text(f"Probe of {added_id}: ok.")
        expect(added_row.locator("td").nth(4)).to_have_text("1")  # one success: the probe
        # Reset with the keyboard; the focus stays on the button through the table's refreshes.
        reset = page.get_by_role("button", name=f"Reset {added_id}")
        reset.focus()
        page.keyboard.press("Enter")
        expect(status).to_have_text(f"{added_id} reset: active.")
        page.wait_for_timeout(2500)  # more than one refresh of the table
        expect(reset).to_be_focused()
        shot(page, "3-accounts")

        # The site ends the added account's session: the next session check marks it invalid, and the
        # table shows it without a reload.
        emulator.fault(tag, session="empty")
        try:
            expect(added_row.locator(".state")).to_have_text("invalid")
            shot(page, "4-accounts-invalid")
            if os.environ.get("UPDATE_SCREENSHOTS") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.locator("body").screenshot(path=str(SCREENSHOT))
        finally:
            emulator.fault(tag)

        # Remove asks first; Cancel keeps the row.
        page.get_by_role("button", name=f"Remove {added_id}").click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_role("button", name="Cancel").click()
        expect(added_row).to_have_count(1)
        page.get_by_role("button", name=f"Remove {added_id}").click()
        dialog.get_by_role("button", name="Remove").click()
        expect(added_row).to_have_count(0)

        # Keys: create (shown once, with a copy button), change limits, revoke.
        page.get_by_role("button", name="Keys", exact=True).click()
        key_form = page.locator("#key-form")
        key_form.get_by_label("Name", exact=True).fill("console-team")
        key_form.get_by_label("Requests per minute", exact=True).fill("30")
        page.get_by_role("button", name="Create key").click()
        new_key = page.get_by_label("New key", exact=True)
        expect(new_key).to_have_value(re.compile(r"^sk-[A-Za-z0-9_-]{43}$"))
        expect(page.get_by_role("button", name="Copy", exact=True)).to_be_visible()
        key_row = row(page, "key-table", "console-team")
        expect(key_row).to_have_count(1)
        expect(key_row.locator("td").nth(4)).to_have_text("30")
        shot(page, "5-keys")
        key_row.get_by_role("button", name="Change limits of console-team").click()
        limits = page.locator("#limits-dialog")
        limits.get_by_label("Requests per minute").fill("12")
        limits.get_by_role("button", name="Save").click()
        expect(key_row.locator("td").nth(4)).to_have_text("12")
        key_row.get_by_role("button", name="Revoke console-team").click()
        page.locator("#confirm-dialog").get_by_role("button", name="Revoke").click()
        expect(key_row).to_have_count(0)
        expect(new_key).to_be_hidden()

        # Try it: a message through the pool, the answer streamed into the page.
        page.get_by_role("button", name="Try it", exact=True).click()
        page.get_by_label("Message", exact=True).fill(
            "[[emu chunk_size=4 delay=0.05]]\n<<<EMU_REPLY\nThe pool answers: streaming works.\nEMU_REPLY>>>"
        )
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.locator("#try-status")).to_contain_text("Streaming")
        expect(page.locator("#try-output")).to_have_text("The pool answers: streaming works.")
        expect(page.locator("#try-status")).to_contain_text("Done in")
        shot(page, "6-try-it")

        # Traffic: the chat just sent is counted in the current minute.
        page.get_by_role("button", name="Traffic", exact=True).click()
        expect(page.locator("#traffic-summary")).to_contain_text("1 request(s)")
        shot(page, "7-traffic")

        # A reload keeps the session (the CSRF token is asked for again), and sign-out ends it.
        page.reload()
        expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("Admin key", exact=True)).to_be_visible()
        page.reload()
        expect(page.get_by_label("Admin key", exact=True)).to_be_visible()

        # The cookies never reached the browser: not in the page, not in any answer it got.
        html = page.content()
        for secret in (added_cookie, tag, standing):
            assert secret not in html
        for response in log.responses:
            try:
                body = response.body().decode(errors="replace")
            except Exception:  # a redirect or a 304 has no body to read
                continue
            for secret in (added_cookie, tag, standing, ADMIN):
                assert secret not in body, f"{response.url} carried a secret"
        # The admin key never in a URL; nothing secret in the gateway's log.
        assert log.urls and not [url for url in log.urls if ADMIN in url or "key=" in url]
        assert not LEAKS.search(gw.log())
        assert "sk-admin-wrong-key" not in gw.log()

        console, failed, statuses = log.unexpected()
        assert console == [], console
        assert failed == [], failed
        assert statuses == [], statuses
    except BaseException:
        shot(page, "failure")
        raise
    finally:
        context.close()


def test_screenshot_is_in_the_repository() -> None:
    """The README shows the console: the picture the test above writes with UPDATE_SCREENSHOTS=1."""
    assert SCREENSHOT.is_file() and SCREENSHOT.read_bytes().startswith(b"\x89PNG")
