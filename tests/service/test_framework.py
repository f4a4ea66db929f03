"""bhiv.core over real HTTP: a small app built with create_app, served by uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from bhiv.core import ServiceSettings, ServiceSpec, create_app, new_metadata, require
from bhiv.core.auth import hash_api_key, mint_token
from bhiv.core.client import ServiceClient, UpstreamError, UpstreamUnavailable
from bhiv.core.context import credentials_var, request_id_var
from bhiv.core.settings import ApiKeySpec
from tests.support.inprocess import serve

T = TypeVar("T")
SECRET = "framework-test-secret-0123456789abcdef"
router = APIRouter(tags=["test"])
calls: dict[str, int] = {}


class Echo(BaseModel):
    size: int


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals that must not leak")


@router.post("/echo", response_model=Echo)
async def echo(request: Request) -> Echo:
    return Echo(size=len(await request.body()))


@router.get("/headers")
async def headers(request: Request) -> dict[str, str | None]:
    return {k: request.headers.get(k) for k in ("x-request-id", "authorization", "x-api-key")}


@router.delete("/admin-only", dependencies=[Depends(require("admin"))])
async def admin_only() -> dict[str, bool]:
    return {"ok": True}


@router.get("/flaky/{key}")
async def flaky(key: str, fail: int = 2) -> dict[str, int]:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= fail:
        from bhiv.core.errors import Problem

        raise Problem(503, "try again")
    return {"calls": calls[key]}


@router.post("/flaky/{key}")
async def flaky_post(key: str) -> dict[str, int]:
    return await flaky(key)


class FrameworkSettings(ServiceSettings):
    service_name = "framework-test"


SPEC = ServiceSpec(
    name="framework-test",
    title="framework test",
    description="",
    settings_class=FrameworkSettings,
    routers=(router,),
    metadata=new_metadata(),
    migrations="unused",
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = FrameworkSettings(
        data_dir=tmp_path_factory.mktemp("fw"),
        jwt_secret=SECRET,
        migrate_on_startup=False,
        max_body_bytes=2048,
        cors_origins=["https://app.example"],
        api_keys=[ApiKeySpec(name="ci", role="viewer", sha256=hash_api_key("key-1"))],
    )
    with serve(create_app(SPEC, settings)) as url:
        yield url


def token(role: str) -> dict[str, str]:
    s = ServiceSettings(jwt_secret=SECRET)
    return {"Authorization": f"Bearer {mint_token(s, subject='t', roles=[role])}"}


def test_platform_endpoints(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"
    ready = httpx.get(f"{base_url}/health/ready").json()
    assert ready["checks"] == {"database": "ok"}
    info = httpx.get(f"{base_url}/info").json()
    assert (
        info["name"] == "framework-test"
        and info["endpoint_count"] >= 10
        and info["uptime_seconds"] >= 0
    )
    who = httpx.get(f"{base_url}/auth/verify", headers=token("editor")).json()
    assert who["roles"] == ["editor"] and who["permissions"] == ["read", "write"]


def test_crash_is_a_problem_with_request_id_and_no_internals(base_url: str) -> None:
    r = httpx.get(f"{base_url}/boom", headers={**token("viewer"), "X-Request-ID": "trace-42"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["request_id"] == "trace-42" == r.headers["x-request-id"]
    assert "secret internals" not in r.text and "Traceback" not in r.text


def test_request_ids_generated_and_unsafe_ones_replaced(base_url: str) -> None:
    generated = httpx.get(f"{base_url}/health").headers["x-request-id"]
    assert len(generated) == 32
    r = httpx.get(f"{base_url}/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_401_vs_403_and_api_keys(base_url: str) -> None:
    assert httpx.get(f"{base_url}/headers").status_code == 401
    assert (
        httpx.get(f"{base_url}/headers", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert httpx.get(f"{base_url}/headers", headers=token("viewer")).status_code == 200
    r = httpx.post(f"{base_url}/echo", content=b"x", headers=token("viewer"))
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert httpx.post(f"{base_url}/echo", content=b"x", headers=token("editor")).status_code == 200
    assert httpx.delete(f"{base_url}/admin-only", headers=token("editor")).status_code == 403
    assert httpx.delete(f"{base_url}/admin-only", headers=token("admin")).status_code == 200
    assert httpx.get(f"{base_url}/headers", headers={"X-API-Key": "key-1"}).status_code == 200
    assert httpx.post(f"{base_url}/echo", headers={"X-API-Key": "key-1"}).status_code == 403
    assert httpx.get(f"{base_url}/headers", headers={"X-API-Key": "key-2"}).status_code == 401


def test_oversized_bodies_are_413(base_url: str) -> None:
    ok = httpx.post(f"{base_url}/echo", content=b"a" * 2048, headers=token("editor"))
    assert ok.json() == {"size": 2048}
    big = httpx.post(f"{base_url}/echo", content=b"a" * 4096, headers=token("editor"))
    assert big.status_code == 413 and big.json()["status"] == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"a" * 1024

    streamed = httpx.post(f"{base_url}/echo", content=chunks(), headers=token("editor"))
    assert streamed.status_code == 413
    small = httpx.post(f"{base_url}/echo", content=iter([b"ab", b"cd"]), headers=token("editor"))
    assert small.json() == {"size": 4}


def test_cors_preflight(base_url: str) -> None:
    r = httpx.options(
        f"{base_url}/headers",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert (
        r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    )
    denied = httpx.options(
        f"{base_url}/headers",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in denied.headers


def test_metrics_by_route_template(base_url: str) -> None:
    httpx.get(f"{base_url}/boom", headers=token("viewer"))
    httpx.get(f"{base_url}/no/such/path")
    text = httpx.get(f"{base_url}/metrics").text
    assert 'bhiv_http_requests_total{method="GET",route="/boom",status="500"}' in text
    assert 'bhiv_http_request_errors_total{method="GET",route="/boom"}' in text
    assert 'route="<unmatched>"' in text
    assert "bhiv_http_request_duration_seconds_bucket" in text


class TestServiceClient:
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    def test_idempotent_calls_are_retried(self, base_url: str) -> None:
        async def go() -> object:
            client = ServiceClient("fw", base_url, attempts=3)
            try:
                return (await client.get("/flaky/a", headers=token("viewer"))).json()
            finally:
                await client.aclose()

        assert self.run(go()) == {"calls": 3}

    def test_posts_are_not_retried(self, base_url: str) -> None:
        async def go() -> None:
            client = ServiceClient("fw", base_url, attempts=3)
            try:
                await client.post("/flaky/b", headers=token("editor"))
            finally:
                await client.aclose()

        with pytest.raises(UpstreamError):
            self.run(go())
        assert calls["b"] == 1

    def test_breaker_opens_and_fails_fast(self, base_url: str) -> None:
        async def go() -> tuple[int, type]:
            client = ServiceClient(
                "fw", base_url, attempts=1, breaker_threshold=3, breaker_reset_seconds=60
            )
            try:
                for _ in range(3):
                    with pytest.raises(UpstreamError):
                        await client.get("/flaky/c?fail=100", headers=token("viewer"))
                before = calls["c"]
                with pytest.raises(UpstreamUnavailable):
                    await client.get("/flaky/c?fail=100", headers=token("viewer"))
                return calls["c"] - before, UpstreamUnavailable
            finally:
                await client.aclose()

        reached, _ = self.run(go())
        assert reached == 0

    def test_request_id_and_credentials_propagate(self, base_url: str) -> None:
        async def go() -> dict[str, str]:
            auth = token("viewer")
            request_id_var.set("rid-123")
            credentials_var.set(dict(auth))
            client = ServiceClient("fw", base_url)
            try:
                return (await client.get("/headers")).json()
            finally:
                await client.aclose()

        seen = self.run(go())
        assert seen["x-request-id"] == "rid-123" and seen["authorization"].startswith("Bearer ")


def test_readiness_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "framework-test.db").mkdir()  # a directory where the SQLite file should be
    settings = FrameworkSettings(data_dir=tmp_path, jwt_secret=SECRET, migrate_on_startup=False)
    with serve(create_app(SPEC, settings)) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        r = httpx.get(f"{url}/health/ready")
        assert r.status_code == 503 and r.json()["detail"].startswith(
            "The database is not reachable"
        )


# A service without a database: no engine, no migrations; readiness comes from
# its own checks, and a streaming path sees chunked bodies as they arrive.
nodb_router = APIRouter(tags=["test"])
nodb_state = {"ready": True}


@nodb_router.post("/stream/count")
async def count_chunks(request: Request) -> dict[str, int]:
    chunks = size = 0
    async for chunk in request.stream():
        if chunk:
            chunks += 1
            size += len(chunk)
    return {"chunks": chunks, "size": size}


async def _upstreams_known(app: object) -> None:
    if not nodb_state["ready"]:
        raise RuntimeError("no upstream discovered yet")


NODB_SPEC = ServiceSpec(
    name="nodb-test",
    title="no database",
    description="",
    settings_class=FrameworkSettings,
    routers=(nodb_router,),
    readiness_checks={"discovery": _upstreams_known},
    streaming_paths=("/stream/",),
    cors_expose_headers=("RateLimit",),
)


def test_service_without_database_streams_and_reports_its_own_readiness(tmp_path: Path) -> None:
    settings = FrameworkSettings(
        data_dir=tmp_path,
        jwt_secret=SECRET,
        max_body_bytes=2048,
        cors_origins=["https://app.example"],
    )
    app = create_app(NODB_SPEC, settings)
    assert app.state.db is None
    with serve(app) as url:
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"] == {"discovery": "ok"}
        nodb_state["ready"] = False
        try:
            r = httpx.get(f"{url}/health/ready")
            assert (
                r.status_code == 503
                and r.json()["detail"] == "discovery is not ready: no upstream discovered yet"
            )
        finally:
            nodb_state["ready"] = True

        def chunks() -> Iterator[bytes]:
            for _ in range(4):
                yield b"a" * 4096
                time.sleep(0.05)  # so the server receives them as separate reads

        # 16 KiB in chunks, past the 2 KiB limit: the handler gets them as they
        # arrive (not one buffered body) and enforces whatever limit it likes.
        r = httpx.post(f"{url}/stream/count", content=chunks(), headers=token("editor"))
        assert r.status_code == 200 and r.json() == {"chunks": 4, "size": 16 * 1024}
        cors = httpx.get(f"{url}/health", headers={"Origin": "https://app.example"})
        assert set(cors.headers["access-control-expose-headers"].split(", ")) == {
            "X-Request-ID",
            "RateLimit",
        }
    assert not (tmp_path / "framework-test.db").exists()
