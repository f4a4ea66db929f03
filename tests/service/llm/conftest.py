"""The LLM query service over real HTTP, on SQLite and PostgreSQL, in front of a
scripted model server (:mod:`tests.support.fake_openai`) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import run_service
from tests.service.llm.helpers import FAKE_KEY, registry_env
from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import ServiceProcess


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=FAKE_KEY) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> FakeOpenAI:
    """The module's model server with no scripts left over from an earlier test."""
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="module")
def llm(
    backend: str, request: pytest.FixtureRequest, fake_server: FakeOpenAI
) -> Iterator[ServiceProcess]:
    yield from run_service("llm-query", backend, request, **registry_env(fake_server))
