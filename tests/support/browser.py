"""Headless Chromium for tests: Debian's browser driven by Playwright for Python.

Playwright's own browser download is never used (``hack/test-deps`` installs the
``chromium`` package). :func:`chromium` skips the calling test, saying why, where
Chromium or the driver is missing; :func:`console_page` opens a fresh context whose
script errors and refused console resources (a CSP violation, a missing asset) fail
the test that caused them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "browser" / "artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Headless as root needs --no-sandbox; the rest keep Chromium off the network
# (it would try Google's hosts for updates, sync and field trials).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    configured = os.environ.get("BHIV_TEST_CHROMIUM")
    if configured:
        return configured
    return next((c for c in CHROMIUM_CANDIDATES if Path(c).exists()), shutil.which("chromium"))


def browser_executable() -> str:
    """Chromium's path, or skip: the browser tier runs only where it can be installed."""
    path = chromium_path()
    if path is None or not Path(path).exists():
        pytest.skip("Chromium is not installed (hack/test-deps installs it where it can)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (the test extra of pyproject.toml)")
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = browser_executable()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        # Playwright gives every launch a fresh, temporary user-data directory.
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    # While open, Playwright's sync API marks an asyncio loop running in this thread;
    # closed, it must leave none, or every later asyncio.run() in the session fails.
    assert not _loop_running(), "Playwright left an asyncio loop running"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@contextmanager
def console_page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) and a tab in it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(msg: Any) -> None:
        # A failed load is judged by its response below (API refusals a test
        # provokes on purpose are fine); any other error (a CSP refusal) is not.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(msg.text)

    def on_response(response: Any) -> None:
        if response.status >= 400 and "/console" in response.url:
            errors.append(f"{response.status} {response.url}")

    tab.on("console", on_console)
    tab.on("response", on_response)
    try:
        yield tab
        assert not errors, "the page reported errors:\n" + "\n".join(errors)
    finally:
        context.close()


def sign_in(page: Any, console_url: str, credential: str) -> None:
    """Open ``console_url``, paste ``credential`` into the sign-in form, wait until signed in."""
    page.goto(console_url)
    page.get_by_label("Token or API key").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#who-text").wait_for(state="visible")


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
