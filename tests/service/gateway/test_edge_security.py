"""Issue 16's attacks on the edge, reproduced over real HTTP against real services.

One gateway (`bhiv serve gateway`) routes to a real llm-query (whose models
include one behind a dead provider), a real integrations service and the echo
upstreams; each test is one attack and the platform's answer to it.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from bhiv.core.auth import mint_token
from bhiv.core.settings import ServiceSettings
from tests.service.gateway.conftest import start_gateway
from tests.service.gateway.upstream import Upstream
from tests.service.llm.helpers import registry_env
from tests.support.fake_openai import FakeOpenAI
from tests.support.net import free_port
from tests.support.servers import TEST_JWT_SECRET, ServiceProcess, service_process

pytestmark = pytest.mark.service

INTEGRATIONS_KEY = "integrations-test-key-not-a-real-secret"


def llm_env(fake: FakeOpenAI) -> dict[str, str]:
    """The test registry plus a model whose provider nobody listens for: every query to it fails."""
    env = registry_env(fake)
    providers = json.loads(env["BHIV_LLM_PROVIDERS"])
    providers.append(
        {
            "name": "dead",
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "api_key_env": "BHIV_LLM_KEY_FAKE",
            "timeout_seconds": 2,
            "max_retries": 0,
        }
    )
    models = json.loads(env["BHIV_LLM_MODELS"])
    models.append({"alias": "broken", "provider": "dead", "model": "nothing"})
    return {
        **env,
        "BHIV_LLM_PROVIDERS": json.dumps(providers),
        "BHIV_LLM_MODELS": json.dumps(models),
    }


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-fake-0123456789abcdefghijklmnop") as server:
        yield server


@pytest.fixture(scope="module")
def llm(
    fake_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    server = service_process(
        "llm-query", tmp_path_factory.mktemp("llm"), **llm_env(fake_server)
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def integrations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    server = service_process(
        "integrations",
        tmp_path_factory.mktemp("integrations"),
        BHIV_CREDENTIALS_KEY=INTEGRATIONS_KEY,
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def edge(
    llm: ServiceProcess,
    integrations: ServiceProcess,
    echo_a: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """The gateway with default policies for the real services (ejection after 3 failures)."""
    server = start_gateway(
        tmp_path_factory.mktemp("edge"),
        {
            "llm-query": [llm.url],
            "integrations": [integrations.url],
            "echo": {"urls": [echo_a.url], "prefix": "/api/echo"},
        },
    )
    try:
        yield server
    finally:
        server.stop()


def bearer(subject: str, role: str, tenant: str | None = None, ttl: int = 600) -> dict[str, str]:
    settings = ServiceSettings(jwt_secret=TEST_JWT_SECRET, data_dir=Path("/nonexistent"))
    token = mint_token(settings, subject=subject, roles=[role], ttl_seconds=ttl, tenant=tenant)
    return {"Authorization": f"Bearer {token}"}


def batch(edge: ServiceProcess, headers: dict[str, str], *items: dict) -> list[dict]:
    r = httpx.post(f"{edge.url}/batch", json={"requests": list(items)}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"]


class TestBatchIdentity:
    def test_a_batch_never_acts_as_another_tenant(self, edge: ServiceProcess) -> None:
        # Same subject (bhiv token's default is "dev"), same role, two tenants.
        subject = f"dev-{uuid.uuid4().hex[:6]}"
        acme, globex = bearer(subject, "editor", "acme"), bearer(subject, "editor", "globex")
        created = batch(
            edge,
            acme,
            {"method": "POST", "path": "/api/llm/conversations", "body": {"title": "acme secrets"}},
        )[0]
        assert created["status"] == 201, created
        # Globex asks within the minted token's reuse window.
        listed = batch(edge, globex, {"path": "/api/llm/conversations"})[0]
        assert listed["status"] == 200, listed
        assert [c["title"] for c in listed["body"]["items"]] == []
        own = batch(edge, acme, {"path": "/api/llm/conversations"})[0]
        assert [c["title"] for c in own["body"]["items"]] == ["acme secrets"]

    def test_sub_requests_carry_exactly_the_callers_identity(self, edge: ServiceProcess) -> None:
        headers = bearer("ident-check", "viewer", "initech", ttl=45)
        seen = batch(edge, headers, {"path": "/api/echo/who"})[0]
        forwarded = dict((k, v) for k, v in seen["body"]["headers"])
        # The caller's own token, unchanged: it cannot outlive itself.
        assert forwarded["authorization"] == headers["Authorization"]


class TestPassiveEjection:
    def test_a_broken_model_does_not_make_llm_query_unreachable(self, edge: ServiceProcess) -> None:
        editor = bearer("ejector", "editor")
        for _ in range(5):
            r = httpx.post(
                f"{edge.url}/api/llm/query",
                json={"prompt": "hello", "model": "broken"},
                headers=editor,
                timeout=30,
            )
            # llm-query's own answer about its provider, passed on as it is.
            assert r.status_code in (502, 503), r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert (
                "model" in r.json()["detail"].lower() or "provider" in r.json()["detail"].lower()
            ), r.text
        # Everyone else still reaches the service.
        other = httpx.get(
            f"{edge.url}/api/llm/conversations", headers=bearer("bystander", "viewer"), timeout=10
        )
        assert other.status_code == 200, other.text
        services = httpx.get(f"{edge.url}/services", headers=editor, timeout=10).json()["services"]
        llm = next(s for s in services if s["name"] == "llm-query")
        assert llm["status"] == "up" and not llm["instances"][0]["ejected"], llm
        assert llm["breaker"]["state"] == "closed", llm


def raw_get(
    server: ServiceProcess, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """GET with the request target exactly as written (httpx would normalise dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


class TestPathConfusion:
    AMBIGUOUS = (
        "/api/echo//admin",
        "/api/echo/./admin",
        "/api/echo/public/../admin",
        "/api/echo/public/%2e%2e/admin",
        "/api/echo/public%2F..%2Fadmin",
        "/api/echo/public/..%2fadmin",
        "/api/echo/public/%2E%2E%5Cadmin",
        "/api/echo/public/..",
    )

    def test_ambiguous_paths_are_refused_before_any_rule(
        self, edge: ServiceProcess, echo_a: Upstream
    ) -> None:
        viewer = bearer("path-viewer", "viewer")
        before = dict(echo_a.hits)
        for target in self.AMBIGUOUS:
            for headers in ({}, viewer):
                status, body = raw_get(edge, target, headers)
                assert status == 400, (target, status, body)
                assert body["errors"][0]["field"] == "path", body
        assert echo_a.hits == before  # nothing reached the service

    def test_the_checked_path_is_the_forwarded_path(self, edge: ServiceProcess) -> None:
        status, body = raw_get(edge, "/api/echo/public/a%20b/")
        assert (
            status == 200
            and body["path"] == "/public/a b/"
            and body["raw_path"] == "/public/a%20b/"
        )
        status, body = raw_get(edge, "/api/echo/admin", bearer("path-viewer", "viewer"))
        assert status == 403, body

    def test_batch_paths_are_checked_alike(self, edge: ServiceProcess) -> None:
        viewer = bearer("path-viewer", "viewer")
        results = batch(
            edge, viewer, {"path": "/api/echo/public/../admin"}, {"path": "/api/echo//admin"}
        )
        assert [r["status"] for r in results] == [400, 400], results


def signed(secret: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, as the reference library signs them."""
    msg_id, at = f"msg_{uuid.uuid4().hex}", int(time.time())
    signature = Webhook(secret).sign(
        msg_id, dt.datetime.fromtimestamp(at, tz=dt.UTC), body.decode()
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


class TestPublicOperations:
    def test_a_signed_webhook_reaches_integrations_through_the_gateway(
        self, edge: ServiceProcess
    ) -> None:
        admin = bearer("hook-admin", "admin")
        r = httpx.post(
            f"{edge.url}/api/integrations/webhook-sources",
            headers=admin,
            json={"name": f"src-{uuid.uuid4().hex[:8]}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        source = r.json()
        body = b'{"type": "payment.succeeded", "amount": 10}'
        url = f"{edge.url}/api/integrations/webhooks/{source['name']}"
        # The gateway learns integrations' public operations from its OpenAPI soon after it starts.
        deadline = time.monotonic() + 20
        while True:
            r = httpx.post(url, content=body, headers=signed(source["secret"], body), timeout=10)
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 202, r.text  # no bearer token: the signature is the sender's proof
        messages = httpx.get(
            f"{edge.url}/api/integrations/webhook-sources/{source['id']}/messages",
            headers=admin,
            timeout=10,
        ).json()
        assert messages["total"] == 1
        # A bad signature is still the service's to refuse; other paths still need a credential.
        assert (
            httpx.post(
                url, content=body, headers=signed("whsec_" + "A" * 32, body), timeout=10
            ).status_code
            == 401
        )
        closed = httpx.get(f"{edge.url}/api/integrations/webhook-sources", timeout=10)
        assert closed.status_code == 401 and closed.json()["type"].endswith("/unauthorized")
        wrong_method = httpx.get(url, timeout=10)
        assert wrong_method.status_code == 401

    def test_credentials_are_never_forwarded_raw_on_public_paths(
        self, edge: ServiceProcess
    ) -> None:
        from tests.service.gateway.conftest import EDITOR_KEY

        echo = httpx.get(
            f"{edge.url}/api/echo/public/x",
            headers={"X-API-Key": "wrong-key", "Authorization": "Bearer forged"},
        ).json()
        names = {k for k, _ in echo["headers"]}
        assert not names & {"x-api-key", "authorization"}, names  # an invalid credential is dropped
        echo = httpx.get(f"{edge.url}/api/echo/public/x", headers={"X-API-Key": EDITOR_KEY}).json()
        headers = dict(echo["headers"])
        assert "x-api-key" not in headers and EDITOR_KEY not in json.dumps(echo)
        assert (
            headers["authorization"].startswith("Bearer ")
            and headers["x-bhiv-subject"] == "apikey:ci-editor"
        )


class TestInternalAddresses:
    def test_metrics_at_the_edge_need_an_admin(
        self, edge: ServiceProcess, llm: ServiceProcess
    ) -> None:
        anonymous = httpx.get(f"{edge.url}/metrics", timeout=10)
        assert anonymous.status_code == 401 and "127.0.0.1" not in anonymous.text
        assert (
            httpx.get(f"{edge.url}/metrics", headers=bearer("m", "viewer"), timeout=10).status_code
            == 403
        )
        scraped = httpx.get(f"{edge.url}/metrics", headers=bearer("m", "admin"), timeout=10)
        assert scraped.status_code == 200 and "bhiv_gateway_instance_available" in scraped.text
        # Inner services keep theirs open to whoever reaches their port (in-cluster).
        assert httpx.get(f"{llm.url}/metrics", timeout=10).status_code == 200

    def test_redirects_point_through_the_gateway(
        self, edge: ServiceProcess, echo_a: Upstream
    ) -> None:
        viewer = bearer("redirected", "viewer")

        def location(to: str) -> str:
            r = httpx.get(
                f"{edge.url}/api/echo/redirect", params={"to": to}, headers=viewer, timeout=10
            )
            assert r.status_code == 302, r.text
            return r.headers["location"]

        assert location(f"{echo_a.url}/elsewhere?x=1") == "/api/echo/elsewhere?x=1"
        assert location("/inner/path") == "/api/echo/inner/path"
        assert location("/api/echo/already") == "/api/echo/already"
        assert location("https://example.com/x") == "https://example.com/x"
        assert location("relative") == "relative"
        editor = bearer("redirected", "editor")
        created = httpx.post(
            f"{edge.url}/api/llm/conversations", json={"title": "t"}, headers=editor, timeout=10
        )
        assert created.headers["location"] == f"/api/llm/conversations/{created.json()['id']}"
        item = batch(edge, editor, {"path": "/api/echo/redirect?to=" + echo_a.url + "/x"})[0]
        assert item["headers"]["location"] == "/api/echo/x"
