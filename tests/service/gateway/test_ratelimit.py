"""Token-bucket rate limits per client IP and per caller, in memory and shared through Redis."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.gateway.conftest import EDITOR_KEY, VIEWER_KEY, start_gateway
from tests.service.gateway.upstream import Upstream
from tests.support.net import free_port
from tests.support.servers import ServiceProcess

TIGHT = json.dumps({"rate": 0.05, "burst": 3})  # 3 at once, then one every 20 s


def gateway_with(tmp: Path, solo: Upstream, **env: str) -> ServiceProcess:
    return start_gateway(tmp, {"solo": {"urls": [solo.url], "prefix": "/api/solo"}}, **env)


@pytest.fixture(scope="module")
def limited(solo: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    gw = gateway_with(
        tmp_path_factory.mktemp("limited"),
        solo,
        BHIV_GATEWAY_RATE_LIMIT_IP=TIGHT,
        BHIV_GATEWAY_RATE_LIMIT_KEY=TIGHT,
    )
    try:
        yield gw
    finally:
        gw.stop()


def test_per_ip_bucket_with_ratelimit_headers(limited: ServiceProcess) -> None:
    # The test client is a trusted proxy on 127.0.0.1, so X-Forwarded-For names the client.
    client = {"X-Forwarded-For": "198.51.100.1", "X-API-Key": VIEWER_KEY}
    answers = [httpx.get(f"{limited.url}/api/solo/status/200", headers=client) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[0].headers["ratelimit-policy"].startswith('"ip";q=3;w=60')
    assert re.fullmatch(r'"ip";r=2;t=\d+, "key";r=2;t=\d+', answers[0].headers["ratelimit"])
    refused = answers[3]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/rate-limited")
    assert refused.headers["ratelimit"].startswith('"ip";r=0;t=')
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 20
    assert int(refused.headers["ratelimit"].split("t=")[1].split(",")[0]) == retry_after
    # Another address (with another credential: the key's own bucket is empty too) gets through.
    other = httpx.get(
        f"{limited.url}/api/solo/status/200",
        headers={
            "X-Forwarded-For": "198.51.100.2",
            "Authorization": f"Bearer {limited.token('viewer')}",
        },
    )
    assert other.status_code == 200
    assert httpx.get(f"{limited.url}/api/nowhere", headers=client).status_code == 429


def test_per_key_bucket(limited: ServiceProcess) -> None:
    def call(ip: str, key: str) -> int:
        headers = {"X-Forwarded-For": ip, "X-API-Key": key}
        return httpx.get(f"{limited.url}/api/solo/status/200", headers=headers).status_code

    # Different addresses, one key: the key's bucket runs out.
    assert [call(f"198.51.100.{10 + n}", EDITOR_KEY) for n in range(4)] == [200, 200, 200, 429]
    assert call("198.51.100.30", VIEWER_KEY) in (
        200,
        429,
    )  # viewer key may be spent by the test above
    metrics = limited.client("admin").get("/metrics").text  # the edge's metrics are admin-only
    assert 'bhiv_gateway_rate_limited_total{policy="key"}' in metrics


def test_token_endpoint_is_limited_per_ip(limited: ServiceProcess) -> None:
    headers = {"X-Forwarded-For": "198.51.100.50", "X-API-Key": "guess"}
    codes = [httpx.post(f"{limited.url}/auth/token", headers=headers).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_redis_limits_hold_across_two_gateways(
    solo: Upstream, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "BHIV_GATEWAY_RATE_LIMIT_KEY": json.dumps({"rate": 0.01, "burst": 4}),
        "BHIV_GATEWAY_REDIS_URL": redis_url,
    }
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = (
        gateway_with(tmp_path / "one", solo, **env),
        gateway_with(tmp_path / "two", solo, **env),
    )
    try:
        headers = {"X-API-Key": EDITOR_KEY}
        codes = []
        for n in range(8):
            gw = one if n % 2 == 0 else two
            codes.append(httpx.get(f"{gw.url}/api/solo/status/200", headers=headers).status_code)
        # One bucket of 4 for the key, shared: 4 pass in all, not 4 per gateway.
        assert codes == [200, 200, 200, 200, 429, 429, 429, 429]
        view = httpx.get(f"{one.url}/services", headers=headers).json()
        assert view["rate_limit_backend"] == "redis"
        # The Redis key names neither the caller nor the key.
        import redis

        keys = [
            k.decode()
            for k in redis.Redis.from_url(redis_url).keys("bhiv:gateway:ratelimit:*")
            if isinstance(k, bytes)
        ]
        assert keys and not any("ci-editor" in k or EDITOR_KEY in k for k in keys)
    finally:
        one.stop()
        two.stop()


def test_memory_limits_are_per_gateway(solo: Upstream, tmp_path: Path) -> None:
    env = {"BHIV_GATEWAY_RATE_LIMIT_KEY": json.dumps({"rate": 0.01, "burst": 2})}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = (
        gateway_with(tmp_path / "one", solo, **env),
        gateway_with(tmp_path / "two", solo, **env),
    )
    try:
        headers = {"X-API-Key": EDITOR_KEY}
        codes = [
            httpx.get(f"{gw.url}/api/solo/status/200", headers=headers).status_code
            for gw in (one, two, one, two, one, two)
        ]
        assert codes == [200, 200, 200, 200, 429, 429]
    finally:
        one.stop()
        two.stop()


def test_an_unreachable_redis_falls_back_to_memory(solo: Upstream, tmp_path: Path) -> None:
    gw = gateway_with(
        tmp_path,
        solo,
        BHIV_GATEWAY_RATE_LIMIT_KEY=json.dumps({"rate": 0.01, "burst": 2}),
        BHIV_GATEWAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    try:
        headers = {"X-API-Key": EDITOR_KEY}
        codes = [
            httpx.get(f"{gw.url}/api/solo/status/200", headers=headers).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]  # still limited, never a 500
        metrics = gw.client("admin").get("/metrics").text
        assert re.search(r"^bhiv_gateway_rate_limit_backend_errors_total [1-9]", metrics, re.M)
    finally:
        gw.stop()


def test_spoofed_forwarded_entries_do_not_escape_the_bucket(limited: ServiceProcess) -> None:
    # Behind a trusted proxy (the test client, on loopback) the client is the rightmost
    # untrusted entry; whatever the client wrote to its left changes nothing.
    def call(n: int) -> int:
        token = limited.token("viewer", subject=f"spoofer-{n}")
        headers = {
            "X-Forwarded-For": f"203.0.113.{n}, 198.51.100.77",
            "Authorization": f"Bearer {token}",
        }
        return httpx.get(f"{limited.url}/api/solo/status/200", headers=headers).status_code

    assert [call(n) for n in range(4)] == [200, 200, 200, 429]


def test_failed_authentication_on_the_gateways_own_endpoints_is_limited(
    limited: ServiceProcess,
) -> None:
    guesser = {"X-Forwarded-For": "198.51.100.88", "Authorization": "Bearer not-a-token"}
    answers = [httpx.get(f"{limited.url}/services", headers=guesser) for _ in range(3)]
    assert [r.status_code for r in answers] == [401, 401, 401]
    batch = httpx.post(
        f"{limited.url}/batch", json={"requests": [{"path": "/api/solo/x"}]}, headers=guesser
    )
    token = httpx.post(f"{limited.url}/auth/token", headers={**guesser, "X-API-Key": "guess"})
    services = httpx.get(f"{limited.url}/services", headers=guesser)
    for refused in (batch, token, services):
        assert refused.status_code == 429, refused.text
        assert (
            refused.json()["type"].endswith("/rate-limited")
            and int(refused.headers["retry-after"]) >= 1
        )


def test_with_no_trusted_proxy_forwarded_headers_are_ignored(
    solo: Upstream, tmp_path: Path
) -> None:
    gw = gateway_with(tmp_path, solo, BHIV_GATEWAY_RATE_LIMIT_IP=TIGHT, BHIV_TRUSTED_PROXIES="")
    try:
        viewer = {"Authorization": f"Bearer {gw.token('viewer')}"}
        echo = httpx.get(
            f"{gw.url}/api/solo/echo", headers={**viewer, "X-Forwarded-For": "198.51.100.9"}
        ).json()
        # The service hears of the peer alone, not of what the client wrote.
        assert [v for k, v in echo["headers"] if k == "x-forwarded-for"] == ["127.0.0.1"]
        statuses = [
            httpx.get(
                f"{gw.url}/api/solo/status/200",
                headers={**viewer, "X-Forwarded-For": f"198.51.100.{n}"},
            ).status_code
            for n in range(3)
        ]
        # Every request is the peer's (127.0.0.1): one bucket, whatever the header says.
        assert statuses == [200, 200, 429]
    finally:
        gw.stop()
