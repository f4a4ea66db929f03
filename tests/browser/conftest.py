"""The browser tier: the web console in headless Chromium against the real platform.

Every service runs as ``bhiv serve NAME`` in its own process on SQLite, the
gateway routes to them (each stoppable on its own, to watch the console notice),
and Playwright for Python drives Debian's Chromium (``hack/test-deps`` installs
it; Playwright's own browser download is never used). Where Chromium or the
driver is missing the tier skips, saying why.

Screenshots land in ``tests/browser/artifacts/`` (git-ignored), one per page.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from bhiv import catalog
from bhiv.core.auth import hash_api_key

from tests.service.llm.helpers import FAKE_KEY, registry_env
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceProcess, service_process

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Headless as root needs --no-sandbox; the rest keep Chromium off the network
# (it would try Google's hosts for updates, sync and field trials).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWER_KEY = "bhiv_console_viewer_key_0123456789"
CREDENTIALS_KEY = "console-test-credentials-key-not-a-secret"
INTEGRATIONS_ENV = {
    "BHIV_CREDENTIALS_KEY": CREDENTIALS_KEY,
    "BHIV_DELIVERY_MAX_ATTEMPTS": "2",
    "BHIV_DELIVERY_RETRY_INITIAL_SECONDS": "0.2",
    "BHIV_DELIVERY_RETRY_MAX_SECONDS": "0.5",
    "BHIV_DELIVERY_TIMEOUT_SECONDS": "2",
    "BHIV_WORKER_POLL_SECONDS": "0.1",
    # The test's webhook receiver listens on loopback, which egress refuses unless allowed.
    "BHIV_EGRESS_ALLOWED_NETWORKS": "127.0.0.0/8",
}


def chromium_path() -> str | None:
    configured = os.environ.get("BHIV_TEST_CHROMIUM")
    if configured:
        return configured
    return next((c for c in CHROMIUM_CANDIDATES if Path(c).exists()), shutil.which("chromium"))


def _unavailable(reason: str) -> None:
    pytest.skip(f"{reason} (hack/test-deps installs it where it can)")


@dataclass
class Platform:
    """Every service and the gateway, each a real process; ``services`` by catalog name."""

    services: dict[str, ServiceProcess]
    model_server: FakeOpenAI

    @property
    def gateway(self) -> ServiceProcess:
        return self.services["gateway"]

    @property
    def console(self) -> str:
        return self.gateway.url + "/console/"

    def token(self, role: str = "admin", subject: str = "console-tester") -> str:
        return self.gateway.token(role, subject=subject)

    def api(self, role: str = "admin") -> httpx.Client:
        """A client of the gateway, as a script would use it."""
        return self.gateway.client(role)


@pytest.fixture(scope="session")
def browser_executable() -> str:
    path = chromium_path()
    if path is None or not Path(path).exists():
        _unavailable("Chromium is not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (the test extra of pyproject.toml)")
    return path


@pytest.fixture(scope="session")
def platform(
    browser_executable: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("platform")
    model_server = FakeOpenAI(api_key=FAKE_KEY).start()
    procs: dict[str, ServiceProcess] = {}

    def make(name: str, **env: str) -> ServiceProcess:
        (tmp / name).mkdir()
        procs[name] = service_process(name, tmp / name, **env)
        return procs[name]

    integrations = make("integrations", **INTEGRATIONS_ENV)
    llm = make("llm-query", **registry_env(model_server))
    relay = {"BHIV_INTEGRATIONS_URL": integrations.url, "BHIV_OUTBOX_RELAY_INTERVAL": "0.5"}
    logistics = make("logistics", **relay)
    crm = make("crm", **relay)
    make(
        "agent-orchestration",
        BHIV_AGENTS_SERVICE_URLS=json.dumps({
            "logistics": logistics.url, "crm": crm.url,
            "integrations": integrations.url, "llm-query": llm.url,
        }),
        BHIV_AGENTS_POLL_INTERVAL_SECONDS="0.05",
    )
    upstreams = {
        name: {"urls": [proc.url], "prefix": catalog.get(name).prefix}
        for name, proc in procs.items()
    }
    make(
        "gateway",
        BHIV_GATEWAY_UPSTREAMS=json.dumps(upstreams),
        BHIV_GATEWAY_HEALTH_INTERVAL_SECONDS="0.5",
        BHIV_API_KEYS=json.dumps(
            [{"name": "console-viewer", "role": "viewer", "sha256": hash_api_key(VIEWER_KEY)}]
        ),
    )
    try:
        # Launched together, waited for together: the services start in parallel.
        for proc in procs.values():
            proc.launch()
        for proc in procs.values():
            proc.wait_ready()
        yield Platform(procs, model_server)
    finally:
        for proc in procs.values():
            proc.stop()
        model_server.stop()


@pytest.fixture(scope="session")
def browser(browser_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        # Playwright gives every launch a fresh, temporary user-data directory.
        chromium = p.chromium.launch(executable_path=browser_executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test: its own sessionStorage, nothing shared."""
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
        # A script error or a refused resource (CSP) fails the test that caused it.
        assert not errors, "the page reported errors:\n" + "\n".join(errors)
    finally:
        context.close()


def sign_in(page: Any, platform: Platform, credential: str | None = None, path: str = "") -> None:
    page.goto(platform.console + path)
    page.get_by_label("Token or API key").fill(credential or platform.token("admin"))
    page.get_by_role("button", name="Sign in").click()
    page.locator("#who-text").wait_for(state="visible")


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
