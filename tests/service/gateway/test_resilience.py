"""Load balancing, health, retries, timeouts and breakers, against real upstream processes."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.service.gateway.conftest import start_gateway
from tests.service.gateway.upstream import Upstream
from tests.support.net import wait_http
from tests.support.servers import ServiceProcess, service_process


def wait_for(predicate, timeout: float = 10.0) -> float:  # noqa: ANN001
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return time.monotonic() - start


def service_view(api: httpx.Client, name: str) -> dict:
    return next(s for s in api.get("/services").json()["services"] if s["name"] == name)


def test_round_robin_spreads_requests(
    api: httpx.Client, echo_a: Upstream, echo_b: Upstream
) -> None:
    seen = [api.get("/api/echo/rr").headers["x-upstream"] for _ in range(10)]
    assert seen.count("a") == seen.count("b") == 5


def test_least_outstanding_avoids_the_busy_instance(
    echo_a: Upstream, echo_b: Upstream, tmp_path: Path
) -> None:
    routes = json.dumps({"echo": {"load_balancer": "least_outstanding", "timeout_seconds": 10}})
    gw = start_gateway(
        tmp_path,
        {"echo": {"urls": [echo_a.url, echo_b.url], "prefix": "/api/echo"}},
        BHIV_GATEWAY_ROUTES=routes,
    )
    try:
        with gw.client("viewer") as api, ThreadPoolExecutor(2) as pool:
            slow = pool.submit(api.get, "/api/echo/slow", params={"seconds": 1.5})
            time.sleep(0.3)  # the slow request is now in flight on one instance
            quick = [api.get("/api/echo/lor").headers["x-upstream"] for _ in range(6)]
            busy = slow.result().json()
        assert busy == {"slow": True}
        assert len(set(quick)) == 1, quick  # every quick request went to the idle instance
    finally:
        gw.stop()


def test_idempotent_requests_are_retried_on_another_instance(
    api: httpx.Client, echo_a: Upstream, echo_b: Upstream
) -> None:
    # Each instance fails its first request on this path: a, b, then a again succeeds.
    r = api.get("/api/echo/flaky/get-1", params={"fail": 1})
    assert r.status_code == 200 and r.json()["attempts"] == 2
    assert echo_a.hits["/flaky/get-1"] + echo_b.hits["/flaky/get-1"] == 3


def test_posts_are_not_retried_after_they_reached_the_service(
    api: httpx.Client, echo_a: Upstream, echo_b: Upstream
) -> None:
    r = api.post("/api/echo/flaky/post-1", params={"fail": 1})
    # The service's own answer is passed on as it is.
    assert r.status_code == 503 and r.json() == {"flaky": "failing"}
    assert echo_a.hits.get("/flaky/post-1", 0) + echo_b.hits.get("/flaky/post-1", 0) == 1


def test_route_timeout_answers_504_in_time(api: httpx.Client) -> None:
    start = time.monotonic()
    r = api.get("/api/echo/slow", params={"seconds": 5})  # the echo route's timeout is 1 s
    assert r.status_code == 504 and r.json()["type"].endswith("/upstream-timeout")
    assert time.monotonic() - start < 2.5


def test_refused_connections_are_retried_for_any_method(solo: Upstream, tmp_path: Path) -> None:
    from tests.service.gateway.upstream import upstream

    with upstream("doomed") as doomed:
        dead = doomed.url
        gw = start_gateway(
            tmp_path,
            {"mixed": {"urls": [dead, solo.url], "prefix": "/api/mixed"}},
            BHIV_GATEWAY_HEALTH_INTERVAL_SECONDS="60",
        )  # one probe at start, then passive only
        with gw.client("editor") as api:
            wait_for(
                lambda: all(
                    i["health"] == "healthy" for i in service_view(api, "mixed")["instances"]
                )
            )
    # `doomed` has stopped listening, and the gateway has not probed since.
    try:
        with gw.client("editor") as api:
            answers = [api.post("/api/mixed/status/201").status_code for _ in range(4)]
            assert answers == [201] * 4  # the refused attempt was sent again, to solo
            view = service_view(api, "mixed")
            states = {i["url"]: i["health"] for i in view["instances"]}
            assert states[dead] == "unhealthy" and view["status"] == "degraded"
            metrics = gw.client("admin").get("/metrics").text  # the edge's metrics are admin-only
            assert (
                f'bhiv_gateway_upstream_requests_total{{instance="{dead}",outcome="refused",'
                'service="mixed"} 1.0' in metrics
            )
            assert 'bhiv_gateway_retries_total{service="mixed"} 1.0' in metrics
    finally:
        gw.stop()


def test_health_checks_and_passive_ejection(
    api: httpx.Client, echo_a: Upstream, echo_b: Upstream
) -> None:
    # Active: b's readiness fails, so within a few probes it leaves the rotation.
    echo_b.healthy = False
    try:
        wait_for(
            lambda: (
                not next(
                    i for i in service_view(api, "echo")["instances"] if i["url"] == echo_b.url
                )["available"]
            )
        )
        assert {api.get("/api/echo/h").headers["x-upstream"] for _ in range(6)} == {"a"}
        b = next(i for i in service_view(api, "echo")["instances"] if i["url"] == echo_b.url)
        assert (
            b["health"] == "unhealthy"
            and b["last_error"] == "/health/ready answered 503"
            and b["last_check"]
        )
    finally:
        echo_b.healthy = True
    wait_for(lambda: service_view(api, "echo")["status"] == "up")

    # Passive: b answers 502 to everything but its health check; retries hide it
    # from clients, and after 3 consecutive failures it is ejected.
    echo_b.failing = 502
    try:
        answers = [api.get("/api/echo/p").status_code for _ in range(8)]
        assert answers == [200] * 8
        b = next(i for i in service_view(api, "echo")["instances"] if i["url"] == echo_b.url)
        assert b["ejected"] and b["health"] == "healthy" and not b["available"]
        failed = echo_b.hits["failing"]
        [api.get("/api/echo/p") for _ in range(4)]
        assert echo_b.hits["failing"] == failed  # ejected: no longer tried
        assert "bhiv_gateway_ejections_total" in api.get("/metrics").text
    finally:
        echo_b.failing = 0


def test_breaker_opens_and_fails_fast(tmp_path: Path) -> None:
    from tests.service.gateway.upstream import upstream

    with upstream("fragile") as fragile:
        gw = start_gateway(
            tmp_path,
            {"fragile": {"urls": [fragile.url], "prefix": "/api/fragile"}},
            BHIV_GATEWAY_ROUTES=json.dumps({"fragile": {"retries": 0}}),
            BHIV_GATEWAY_BREAKER_THRESHOLD="3",
            BHIV_GATEWAY_BREAKER_RESET_SECONDS="1",
            BHIV_GATEWAY_EJECT_AFTER_FAILURES="1000",
        )
        try:
            with gw.client("viewer") as api:
                assert [api.get("/api/fragile/status/503").status_code for _ in range(3)] == [
                    503
                ] * 3
                assert fragile.hits["/status/503"] == 3
                start = time.monotonic()
                r = api.get("/api/fragile/status/200")
                assert time.monotonic() - start < 0.2
                assert (
                    r.status_code == 503
                    and r.json()["type"].endswith("/circuit-open")
                    and r.headers["retry-after"]
                )
                assert (
                    "/status/200" not in fragile.hits
                )  # the breaker answered; the service saw nothing
                assert service_view(api, "fragile")["breaker"]["state"] == "opened"
                time.sleep(1.1)  # half-open after the reset time: a success closes it
                assert api.get("/api/fragile/status/200").status_code == 200
                assert service_view(api, "fragile")["breaker"]["state"] == "closed"
        finally:
            gw.stop()


@pytest.fixture
def logistics_and_gateway(tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    for sub in ("logistics", "gw"):
        (tmp_path / sub).mkdir()
    logistics = service_process("logistics", tmp_path / "logistics").start()
    gw = start_gateway(tmp_path / "gw", {"logistics": [logistics.url]})
    try:
        yield logistics, gw
    finally:
        gw.stop()
        logistics.stop()


def test_a_killed_service_answers_503_fast_and_comes_back(
    logistics_and_gateway: tuple[ServiceProcess, ServiceProcess],
) -> None:
    logistics, gw = logistics_and_gateway
    with gw.client("editor") as api:
        created = api.post(
            "/api/logistics/inventory",
            json={"sku": "GW-1", "name": "Through the gateway", "quantity": 4},
        )
        assert created.status_code == 201, created.text
        assert api.get("/api/logistics/inventory/1").json()["sku"] == "GW-1"

        assert logistics.process is not None
        logistics.process.send_signal(signal.SIGKILL)
        logistics.process.wait()
        start = time.monotonic()
        r = api.get("/api/logistics/inventory")
        assert time.monotonic() - start < 0.5
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        noticed = wait_for(lambda: service_view(api, "logistics")["status"] == "down", timeout=5)
        assert noticed < 3
        for _ in range(5):
            start = time.monotonic()
            assert api.get("/api/logistics/inventory").status_code == 503
            assert time.monotonic() - start < 0.2

        logistics.start()  # same port, same data
        wait_for(lambda: service_view(api, "logistics")["status"] == "up", timeout=10)
        assert api.get("/api/logistics/inventory/1").json()["sku"] == "GW-1"


def test_bhiv_up_routes_through_the_gateway(tmp_path: Path) -> None:
    """`bhiv up` tells the gateway where the services it started are (here, with a port offset):
    through the gateway alone, a client with a token reaches every one of them."""
    import datetime as dt
    import os
    import subprocess
    import sys

    from standardwebhooks import Webhook

    from bhiv import catalog
    from tests.support.servers import TEST_JWT_SECRET
    from tests.support.up import free_offset

    offset = free_offset()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    env.update(BHIV_DATA_DIR=str(tmp_path), BHIV_JWT_SECRET=TEST_JWT_SECRET, PYTHONUNBUFFERED="1")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "bhiv", "up", "--port-offset", str(offset)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        gateway_url = f"http://127.0.0.1:{catalog.get('gateway').port + offset}"
        wait_http(f"{gateway_url}/health/ready", timeout=120, alive=lambda: up.poll() is None)
        token = ServiceProcess("x", 0, tmp_path, {}, tmp_path / "x.log").token("editor")
        services = {name: e for name, e in catalog.SERVICES.items() if name != "gateway"}
        with httpx.Client(
            base_url=gateway_url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            wait_for(
                lambda: all(s["status"] == "up" for s in api.get("/services").json()["services"]),
                timeout=10,
            )
            assert sorted(s["name"] for s in api.get("/services").json()["services"]) == sorted(
                services
            )
            for entry in services.values():
                who = api.get(f"{entry.prefix}/auth/verify")
                assert who.status_code == 200, (entry.name, who.text)
                assert who.json()["roles"] == ["editor"]
            r = api.post(
                "/api/logistics/inventory",
                json={"sku": "UP-GW", "name": "via bhiv up", "quantity": 1},
            )
            assert r.status_code == 201, r.text
            paths = httpx.get(f"{gateway_url}/openapi.json").json()["paths"]
            for entry in services.values():
                assert any(p.startswith(entry.prefix + "/") for p in paths), entry.name
            # Integrations declares its webhook receiver public: a sender needs no token at the gateway.
            admin = ServiceProcess("x", 0, tmp_path, {}, tmp_path / "x.log").token("admin")
            source = api.post(
                "/api/integrations/webhook-sources",
                json={"name": "up-sender"},
                headers={"Authorization": f"Bearer {admin}"},
            ).json()
            body = b'{"type": "ping"}'
            at = dt.datetime.now(tz=dt.UTC)
            signature = Webhook(source["secret"]).sign("msg_up_1", at, body.decode())
            hook = {
                "webhook-id": "msg_up_1",
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature,
                "content-type": "application/json",
            }
            url = f"{gateway_url}/api/integrations/webhooks/up-sender"
            wait_for(
                lambda: httpx.post(url, content=body, headers=hook).status_code != 401, timeout=20
            )
            assert httpx.post(url, content=body, headers=hook).status_code in (200, 202)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        log.close()
