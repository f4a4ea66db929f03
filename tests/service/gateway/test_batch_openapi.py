"""POST /batch, the aggregated OpenAPI and /docs, request IDs, access logs and metrics."""

from __future__ import annotations

import json
import time

import httpx

from tests.service.gateway.conftest import VIEWER_KEY
from tests.service.gateway.upstream import Upstream
from tests.support.servers import ServiceProcess


def test_batch_runs_items_concurrently_in_order_with_per_item_failures(api: httpx.Client) -> None:
    started = time.monotonic()
    r = api.post(
        "/batch",
        json={
            "requests": [
                {"id": "slow", "path": "/api/solo/slow?seconds=0.6"},
                {
                    "id": "echo",
                    "method": "POST",
                    "path": "/api/echo/orders?x=1",
                    "body": {"sku": "A-1", "n": 2},
                    "headers": {"X-Trace": "t1"},
                },
                {"id": "missing", "path": "/api/nowhere"},
                {"id": "teapot", "path": "/api/echo/x?status=418"},
                {"id": "slow2", "path": "/api/solo/slow?seconds=0.6"},
            ]
        },
        headers={"X-Request-ID": "batch-1"},
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["slow", "echo", "missing", "teapot", "slow2"]
    assert [x["status"] for x in results] == [200, 200, 404, 418, 200]
    assert elapsed < 1.1  # the two slow items ran side by side
    echo = results[1]["body"]
    assert echo["method"] == "POST" and echo["path"] == "/orders" and echo["query"] == "x=1"
    assert json.loads(echo["body"]) == {"sku": "A-1", "n": 2}
    headers = dict(echo["headers"])
    assert headers["x-trace"] == "t1" and headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "batch-1.1"
    assert results[2]["body"]["type"].endswith("/not-found")
    assert results[0]["body"] == {"slow": True} and results[0]["body_encoding"] == "json"


def test_batch_items_are_authorized_one_by_one(gateway: ServiceProcess) -> None:
    r = httpx.post(
        f"{gateway.url}/batch",
        headers={"X-API-Key": VIEWER_KEY},
        json={
            "requests": [
                {"path": "/api/echo/read"},
                {"method": "DELETE", "path": "/api/echo/items/1"},
                {"path": "/api/echo/admin/users"},
            ]
        },
    )
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == [200, 403, 403]
    assert (
        httpx.post(f"{gateway.url}/batch", json={"requests": [{"path": "/api/echo/x"}]}).status_code
        == 401
    )


def test_malformed_batches_are_422(api: httpx.Client) -> None:
    too_many = api.post("/batch", json={"requests": [{"path": "/api/echo/x"}] * 21})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "requests"
    bad: object
    for bad in (
        {"requests": []},
        {"requests": [{"path": "/not-api"}]},
        {"requests": [{"path": "/api/echo/x", "method": "BREW"}]},
        {"requests": [{"path": "/api/echo/x", "headers": {"Authorization": "Bearer other"}}]},
        {"requests": [{"path": "/api/echo/x"}], "extra": 1},
        [1, 2],
    ):
        r = api.post("/batch", json=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"


def test_aggregated_openapi_and_docs(api: httpx.Client, gateway: ServiceProcess) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "/api/echo/echo/{rest}" in doc["paths"] and "/api/solo/echo/{rest}" in doc["paths"]
    op = doc["paths"]["/api/echo/echo/{rest}"]["get"]
    assert op["operationId"] == "echo.echo" and op["tags"] == ["echo: echo"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/echo.Echo" and "solo.Echo" in doc["components"]["schemas"]
    assert "/services" in doc["paths"] and "/batch" in doc["paths"]  # the gateway's own API too
    assert doc["x-bhiv-services"]["echo"]["prefix"] == "/api/echo"
    assert "bearer" in doc["components"]["securitySchemes"]
    docs = httpx.get(f"{gateway.url}/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_openapi_follows_the_live_system(
    api: httpx.Client, gateway: ServiceProcess, solo: Upstream
) -> None:
    solo.healthy = False
    try:
        deadline = time.monotonic() + 10
        while "/api/solo/echo/{rest}" in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]:
            assert time.monotonic() < deadline, "solo never left the document"
            time.sleep(0.2)
        assert "solo" in httpx.get(f"{gateway.url}/openapi.json").json()["x-bhiv-unavailable"]
    finally:
        solo.healthy = True
    deadline = time.monotonic() + 10
    while "/api/solo/echo/{rest}" not in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]:
        assert time.monotonic() < deadline, "solo never came back"
        time.sleep(0.2)


def test_services_lists_instances_and_needs_a_credential(
    api: httpx.Client, gateway: ServiceProcess, echo_a: Upstream, echo_b: Upstream
) -> None:
    assert httpx.get(f"{gateway.url}/services").status_code == 401
    view = api.get("/services").json()
    assert view["discovery"] == "local" and view["rate_limit_backend"] == "memory"
    echo = next(s for s in view["services"] if s["name"] == "echo")
    assert echo["prefix"] == "/api/echo" and echo["breaker"]["state"] in ("closed", "half-opened")
    assert {i["url"] for i in echo["instances"]} == {echo_a.url, echo_b.url}
    assert all(i["last_check"] for i in echo["instances"])
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    assert ready["checks"] == {"discovery": "ok"}


def test_request_ids_access_logs_and_metrics(api: httpx.Client, gateway: ServiceProcess) -> None:
    generated = api.get("/api/echo/rid")
    rid = generated.headers["x-request-id"]
    assert len(rid) == 32 and [
        v for k, v in generated.json()["headers"] if k == "x-request-id"
    ] == [rid]
    token = api.headers["Authorization"].removeprefix("Bearer ")
    api.get(
        "/api/echo/logged",
        params={"api_key": "query-secret"},
        headers={"X-Request-ID": "log-check-1"},
    )
    httpx.get(f"{gateway.url}/api/echo/x", headers={"X-API-Key": VIEWER_KEY})
    time.sleep(0.3)
    lines = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]
    access = next(
        x for x in lines if x.get("request_id") == "log-check-1" and x["logger"] == "bhiv.access"
    )
    assert access["route"] == "/api/echo/{path}" and access["upstream"] == "echo"
    assert access["instance"].startswith("http://127.0.0.1:") and access["status"] == 200
    text = gateway.log()
    assert token not in text and VIEWER_KEY not in text and "query-secret" not in text

    metrics = api.get("/metrics").text
    assert 'bhiv_http_requests_total{method="GET",route="/api/echo/{path}",status="200"}' in metrics
    assert 'bhiv_gateway_upstream_duration_seconds_bucket{le="0.005",service="echo"}' in metrics
    assert 'outcome="200",service="echo"}' in metrics
    assert "bhiv_gateway_instance_available" in metrics
