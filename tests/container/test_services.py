"""Every service in the catalog, served from the image the way a restricted pod runs it:
read-only root filesystem, only /tmp writable, numeric non-root user, no
capabilities, no privilege escalation. Checked from outside the container."""

from __future__ import annotations

import time

import httpx
import pytest

from bhiv import catalog
from tests.container.conftest import Container
from tests.support.net import free_port
from tests.support.servers import TEST_JWT_SECRET

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 25


def _wait_ready(container: Container, url: str) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        if not container.running():
            pytest.fail(
                f"container exited before {url} answered; state {container.state()}\n"
                + container.logs()[-4000:]
            )
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.25)
    pytest.fail(
        f"{url} did not answer 200 within {START_TIMEOUT_S}s (last: {last})\n"
        + container.logs()[-4000:]
    )


@pytest.mark.parametrize("service", sorted(catalog.SERVICES))
def test_service_serves_health_from_the_image(service: str, start_container) -> None:
    port = free_port()
    container = start_container(
        "serve",
        service,
        env={
            "BHIV_PORT": str(port),
            # Host networking shares this machine's interfaces: loopback only.
            "BHIV_HOST": "127.0.0.1",
            "BHIV_JWT_SECRET": TEST_JWT_SECRET,
            "BHIV_LOG_LEVEL": "INFO",
        },
    )
    base = f"http://127.0.0.1:{port}"

    ready = _wait_ready(container, f"{base}/health/ready")
    assert ready.json()["status"] == "ok"

    health = httpx.get(f"{base}/health", timeout=5.0)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["service"] == service

    # SIGTERM (docker stop) ends it cleanly and promptly, as a pod's termination would.
    started = time.monotonic()
    container.docker.run(
        "stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout=STOP_TIMEOUT_S + 30
    )
    stopped_in = time.monotonic() - started
    state = container.state()
    assert state["ExitCode"] == 0, (
        f"exit {state['ExitCode']} after SIGTERM\n{container.logs()[-4000:]}"
    )
    assert stopped_in < STOP_TIMEOUT_S, f"took {stopped_in:.1f}s to stop: SIGTERM was not handled"
    assert not state["OOMKilled"]
