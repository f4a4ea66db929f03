"""The integrations service over real HTTP, on SQLite and PostgreSQL, with fast
retry schedules so retries, dead-letters and schedules happen within a test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bhiv.core.auth import hash_api_key
from tests.conftest import run_service
from tests.service.integrations.peers import Receiver, receiver
from tests.support.servers import ServiceProcess, service_process

CREDENTIALS_KEY = "integrations-test-key-not-a-real-secret"
# An API key the operator named for the CRM service (how a service authenticates with RS256).
CRM_SERVICE_API_KEY = "crm-service-key-for-tests-only"

FAST = {
    "BHIV_CREDENTIALS_KEY": CREDENTIALS_KEY,
    "BHIV_DELIVERY_MAX_ATTEMPTS": "4",
    "BHIV_DELIVERY_RETRY_INITIAL_SECONDS": "0.3",
    "BHIV_DELIVERY_RETRY_BASE": "2",
    "BHIV_DELIVERY_RETRY_MAX_SECONDS": "2",
    "BHIV_DELIVERY_RETRY_JITTER": "0.1",
    "BHIV_DELIVERY_TIMEOUT_SECONDS": "1",
    "BHIV_WORKER_POLL_SECONDS": "0.1",
    "BHIV_OUTBOX_RELAY_INTERVAL": "0.2",
    # The test peers (receivers, source APIs) listen on loopback, which egress blocks unless allowed.
    "BHIV_EGRESS_ALLOWED_NETWORKS": "127.0.0.0/8,::1",
    "BHIV_API_KEYS": json.dumps(
        [{"name": "service:crm", "role": "editor", "sha256": hash_api_key(CRM_SERVICE_API_KEY)}]
    ),
}


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture(scope="module")
def integrations(backend: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    yield from run_service("integrations", backend, request, **FAST)


@contextmanager
def publishing(
    name: str, backend: str, request: pytest.FixtureRequest
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """The integrations service and service ``name``, whose outbox relay points at it."""

    def database() -> str | None:
        return (
            request.getfixturevalue("postgres").create_database() if backend == "postgres" else None
        )

    tmp = request.getfixturevalue("tmp_path_factory")
    integrations = service_process("integrations", tmp.mktemp("int"), database(), **FAST)
    publisher = service_process(
        name,
        tmp.mktemp(name),
        database(),
        BHIV_INTEGRATIONS_URL=integrations.url,
        BHIV_OUTBOX_RELAY_INTERVAL="0.2",
    )
    integrations.start()
    try:
        publisher.start()
        try:
            yield integrations, publisher
        finally:
            publisher.stop()
    finally:
        integrations.stop()
