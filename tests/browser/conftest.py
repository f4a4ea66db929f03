"""The browser tier: the web console in headless Chromium against the real platform.

Every service runs as ``bhiv serve NAME`` in its own process on SQLite, the
gateway routes to them (each stoppable on its own, to watch the console notice),
and Playwright for Python drives Debian's Chromium (``hack/test-deps`` installs
it; Playwright's own browser download is never used). Where Chromium or the
driver is missing the tier skips, saying why.

Screenshots land in ``tests/browser/artifacts/`` (git-ignored), one per page;
the browser itself comes from ``tests/support/browser.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bhiv import catalog
from bhiv.core.auth import hash_api_key
from tests.service.llm.helpers import FAKE_KEY, registry_env
from tests.support import browser as support
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceProcess, service_process

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
    return support.browser_executable()


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
        BHIV_AGENTS_SERVICE_URLS=json.dumps(
            {
                "logistics": logistics.url,
                "crm": crm.url,
                "integrations": integrations.url,
                "llm-query": llm.url,
            }
        ),
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


# Module-scoped, never session-scoped: Playwright's sync API keeps an asyncio loop
# marked running in the main thread for as long as it is open, and every later test
# that calls asyncio.run() (unit and service tiers alike) would fail with "cannot be
# called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with support.chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test: its own sessionStorage, nothing shared."""
    with support.console_page(browser) as tab:
        yield tab


def sign_in(page: Any, platform: Platform, credential: str | None = None, path: str = "") -> None:
    support.sign_in(page, platform.console + path, credential or platform.token("admin"))
