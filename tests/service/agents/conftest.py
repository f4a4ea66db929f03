"""Agent orchestration over real HTTP, on SQLite and PostgreSQL, with a real
Logistics service to call and a scripted HTTP target for HTTP agents."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import run_service
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceProcess

# Fast enough for tests: the engine looks for work every 50 ms; one priority
# point per second of waiting.
ENGINE_ENV = {
    "BHIV_AGENTS_POLL_INTERVAL_SECONDS": "0.05",
    "BHIV_AGENTS_AGING_SECONDS": "1",
    "BHIV_AGENTS_RUN_LEASE_SECONDS": "5",
}


@pytest.fixture(scope="module")
def target() -> Iterator[FakeOpenAI]:
    """An HTTP server HTTP agents POST to (it answers like a chat-completions API)."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def agents(
    backend: str, request: pytest.FixtureRequest, logistics: ServiceProcess
) -> Iterator[ServiceProcess]:
    urls = {
        "logistics": logistics.url,
        "crm": "http://127.0.0.1:9",
        "integrations": "http://127.0.0.1:9",
        "llm-query": "http://127.0.0.1:9",
    }
    for server in run_service(
        "agent-orchestration",
        backend,
        request,
        BHIV_AGENTS_SERVICE_URLS=json.dumps(urls),
        **ENGINE_ENV,
    ):
        yield server
        # The engine works in the background: its failures would not reach a test's answer.
        errors = [line for line in server.log().splitlines() if '"level": "ERROR"' in line]
        assert not errors, "agent-orchestration logged errors:\n" + "\n".join(errors[:5])
