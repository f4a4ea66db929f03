"""Gateway fixtures: real upstream servers and the gateway as `bhiv serve gateway`.

Two echo upstreams (instances "a" and "b" of the service `echo` at
/api/echo), a third (`solo`) on its own, and a real Logistics service; the
gateway in a child process routes to all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bhiv.core.auth import hash_api_key
from tests.service.gateway.upstream import Upstream, upstream
from tests.support.servers import ServiceProcess, service_process

VIEWER_KEY = "bhiv_test_viewer_key_0123456789"
EDITOR_KEY = "bhiv_test_editor_key_0123456789"
API_KEYS = json.dumps([
    {"name": "ci-viewer", "role": "viewer", "sha256": hash_api_key(VIEWER_KEY)},
    {"name": "ci-editor", "role": "editor", "sha256": hash_api_key(EDITOR_KEY)},
])
ROUTES = json.dumps({
    "echo": {
        "timeout_seconds": 1.0,
        "retries": 2,
        "rules": [{"path": "/admin", "role": "admin"}, {"path": "/reports", "methods": ["GET"], "role": "editor"}],
        "public_paths": ["/public"],
    },
    "solo": {"timeout_seconds": 5, "load_balancer": "least_outstanding"},
})


@pytest.fixture(scope="module")
def echo_a() -> Iterator[Upstream]:
    with upstream("a") as up:
        yield up


@pytest.fixture(scope="module")
def echo_b() -> Iterator[Upstream]:
    with upstream("b") as up:
        yield up


@pytest.fixture(scope="module")
def solo() -> Iterator[Upstream]:
    with upstream("solo") as up:
        yield up


def start_gateway(tmp: Path, upstreams: dict[str, object], **env: str) -> ServiceProcess:
    settings = {
        "BHIV_GATEWAY_UPSTREAMS": json.dumps(upstreams),
        "BHIV_API_KEYS": API_KEYS,
        "BHIV_GATEWAY_ROUTES": ROUTES,
        "BHIV_GATEWAY_HEALTH_INTERVAL_SECONDS": "0.5",
        **env,
    }
    return service_process("gateway", tmp, **settings).start()


@pytest.fixture(scope="module")
def gateway(
    echo_a: Upstream, echo_b: Upstream, solo: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    server = start_gateway(
        tmp,
        {
            "echo": {"urls": [echo_a.url, echo_b.url], "prefix": "/api/echo"},
            "solo": {"urls": [solo.url], "prefix": "/api/solo"},
        },
        BHIV_CORS_ORIGINS="https://app.example",
        BHIV_GATEWAY_MAX_BODY_BYTES=str(4 * 1024 * 1024),
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.token('admin')}"},
                      timeout=30) as client:
        yield client
