"""Idle sockets, slow request heads and bursts against a gateway with default settings.

Requests, not sockets, are what the server limits: idle and slow-header
connections are closed after a bounded time, liveness keeps answering while
they are open, and a burst beyond the concurrency limit waits its turn or is
shed with a 503 problem, never left hanging.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.gateway.conftest import start_gateway
from tests.service.gateway.upstream import Upstream
from tests.support.servers import ServiceProcess

pytestmark = pytest.mark.service

IDLE_SOCKETS = 500
BURST = 300


@pytest.fixture(scope="module")
def plain(solo: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A gateway with default server settings (no rate limit configured)."""
    gw = start_gateway(
        tmp_path_factory.mktemp("overload"), {"solo": {"urls": [solo.url], "prefix": "/api/solo"}}
    )
    try:
        yield gw
    finally:
        gw.stop()


def idle_sockets(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


async def burst(gw: ServiceProcess) -> list[httpx.Response | BaseException]:
    token = gw.token("viewer")
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=gw.url, limits=limits, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        return await asyncio.gather(
            *(client.get("/api/solo/slow", params={"seconds": "0.5"}) for _ in range(BURST)),
            return_exceptions=True,
        )


def test_idle_sockets_and_a_burst_leave_liveness_answering_and_lose_nothing(
    plain: ServiceProcess,
) -> None:
    idle = idle_sockets(plain.port, IDLE_SOCKETS)
    try:
        results: list[httpx.Response | BaseException] = []
        runner = threading.Thread(target=lambda: results.extend(asyncio.run(burst(plain))))
        runner.start()
        # The probes run while the idle sockets are open and the burst is in flight;
        # a bounded client timeout: liveness answers within a second or the test fails.
        probes: list[int] = []
        while runner.is_alive() or not probes:
            for probe in ("/health", "/health/ready"):
                probes.append(httpx.get(f"{plain.url}{probe}", timeout=1.0).status_code)
            time.sleep(0.05)
        runner.join()
    finally:
        for s in idle:
            s.close()
    assert set(probes) == {200}, probes
    assert len(results) == BURST
    hung = [r for r in results if isinstance(r, BaseException)]
    assert not hung, hung[:3]
    statuses = [r.status_code for r in results]  # type: ignore[union-attr]
    for r in results:
        if r.status_code != 200:  # type: ignore[union-attr]
            assert r.status_code in (429, 503), r.text  # type: ignore[union-attr]
            assert r.headers["content-type"] == "application/problem+json"  # type: ignore[union-attr]
    # Within the default concurrency plus its queue, a burst this size is served, not shed.
    assert statuses.count(200) == BURST, sorted(set(statuses))


def test_idle_and_slow_header_connections_are_closed(plain: ServiceProcess) -> None:
    silent = socket.create_connection(("127.0.0.1", plain.port), timeout=30)
    drip = socket.create_connection(("127.0.0.1", plain.port), timeout=30)
    closed = {}

    def dripping() -> None:
        try:
            drip.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for _ in range(120):  # one header byte every 0.25 s: never a complete head
                drip.sendall(b"X")
                time.sleep(0.25)
            closed["drip"] = False
        except OSError:
            closed["drip"] = True

    dripper = threading.Thread(target=dripping)
    dripper.start()
    try:
        # The server closes a connection that sent nothing (EOF: b"") well before 30 s.
        assert silent.recv(1) == b""
        dripper.join(30)
        assert closed.get("drip") is True
    finally:
        silent.close()
        drip.close()
    assert httpx.get(f"{plain.url}/health", timeout=5).status_code == 200
