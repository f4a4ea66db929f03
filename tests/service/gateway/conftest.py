"""Gateway fixtures: real upstream servers and the gateway as `bhiv serve gateway`.

Two echo upstreams (instances "a" and "b" of the service `echo` at
/api/echo), a third (`solo`) on its own, and a real Logistics service; the
gateway in a child process routes to all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bhiv.core.auth import hash_api_key
from tests.service.gateway.upstream import Upstream, upstream
from tests.support.net import free_port
from tests.support.servers import ServiceProcess, service_process

VIEWER_KEY = "bhiv_test_viewer_key_0123456789"
EDITOR_KEY = "bhiv_test_editor_key_0123456789"
API_KEYS = json.dumps(
    [
        {"name": "ci-viewer", "role": "viewer", "sha256": hash_api_key(VIEWER_KEY)},
        {"name": "ci-editor", "role": "editor", "sha256": hash_api_key(EDITOR_KEY)},
    ]
)
ROUTES = json.dumps(
    {
        "echo": {
            "timeout_seconds": 1.0,
            "retries": 2,
            "rules": [
                {"path": "/admin", "role": "admin"},
                {"path": "/reports", "methods": ["GET"], "role": "editor"},
            ],
            "public_paths": ["/public"],
        },
        "solo": {"timeout_seconds": 5, "load_balancer": "least_outstanding"},
    }
)


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
    with httpx.Client(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {gateway.token('admin')}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Debian redis-server on a free loopback port (hack/test-deps installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("redis-server is not installed: run hack/test-deps")
        pytest.skip("redis-server is not installed (hack/test-deps installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(
                    f"redis-server did not start: {(workdir / 'redis.log').read_text()}"
                )
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
