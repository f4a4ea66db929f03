"""The gateway's pure parts: routing table, balancing, health, buckets, budgets, roles, OpenAPI."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bhiv.core.auth import Identity
from bhiv.core.errors import Problem
from bhiv.gateway.access import EdgeAuth
from bhiv.gateway.forwarder import RetryBudget
from bhiv.gateway.openapi import merge
from bhiv.gateway.ratelimit import Decision, MemoryBuckets, rate_limit_headers
from bhiv.gateway.registry import DiscoveredService, Health, Registry
from bhiv.gateway.settings import GatewaySettings, RateSpec, RoutePolicy
from tests.support.servers import TEST_JWT_SECRET


def registry(lb: str = "round_robin") -> Registry:
    reg = Registry(lambda name: RoutePolicy(load_balancer=lb))
    reg.update(
        [
            DiscoveredService("a", "/api/a", ("http://a1", "http://a2", "http://a3")),
            DiscoveredService("ab", "/api/a/b", ("http://ab",)),
        ]
    )
    return reg


def test_longest_prefix_on_segment_boundaries() -> None:
    reg = registry()
    assert reg.match("/api/a/b/c")[0].name == "ab"  # type: ignore[index]
    assert reg.match("/api/a/bc") == (reg.upstreams["a"], "/bc")
    assert reg.match("/api/a") == (reg.upstreams["a"], "/")
    assert reg.match("/api/ab") is None and reg.match("/api") is None


def test_round_robin_skips_unavailable_and_avoids_tried() -> None:
    up = registry().upstreams["a"]
    assert [up.pick().url for _ in range(6)] == ["http://a1", "http://a2", "http://a3"] * 2  # type: ignore[union-attr]
    up.instances[1].health = Health.UNHEALTHY
    assert {up.pick().url for _ in range(4)} == {"http://a1", "http://a3"}  # type: ignore[union-attr]
    assert up.pick(avoid=[up.instances[0]]).url == "http://a3"  # type: ignore[union-attr]
    # Only tried instances left: trying one again beats giving up.
    assert up.pick(avoid=[up.instances[0], up.instances[2]]) is not None
    for inst in up.instances:
        inst.health = Health.UNHEALTHY
    assert up.pick() is None and up.status(0) == "down"


def test_least_outstanding() -> None:
    up = registry("least_outstanding").upstreams["a"]
    up.instances[0].outstanding, up.instances[1].outstanding, up.instances[2].outstanding = 3, 0, 1
    assert {getattr(up.pick(), "url", None) for _ in range(5)} == {"http://a2"}
    up.instances[1].outstanding = 1
    # Ties are shared.
    assert {getattr(up.pick(), "url", None) for _ in range(10)} == {"http://a2", "http://a3"}


def test_updates_keep_what_is_known_about_instances() -> None:
    reg = registry()
    inst = reg.upstreams["a"].instances[0]
    reg.probe_result(inst, False, "down", unhealthy_threshold=2)
    assert inst.health is Health.UNHEALTHY  # unknown -> unhealthy at the first failure
    generation = reg.generation
    removed = reg.update([DiscoveredService("a", "/api/a", ("http://a1", "http://a4"))])
    assert [u.name for u in removed] == ["ab"] and reg.generation > generation
    assert reg.upstreams["a"].instances[0] is inst and inst.health is Health.UNHEALTHY
    reg.probe_result(inst, True, None, unhealthy_threshold=2)
    reg.probe_result(inst, False, "blip", unhealthy_threshold=2)
    assert inst.health is Health.HEALTHY  # one failure after being healthy is not enough
    reg.probe_result(inst, False, "blip", unhealthy_threshold=2)
    assert inst.health is Health.UNHEALTHY and inst.last_error == "blip"


def test_passive_ejection() -> None:
    reg = registry()
    inst = reg.upstreams["a"].instances[0]
    assert not reg.gateway_failure(inst, "502", eject_after=2, ejection_seconds=30)
    reg.gateway_success(inst)
    assert not reg.gateway_failure(inst, "502", eject_after=2, ejection_seconds=30)
    assert reg.gateway_failure(inst, "502", eject_after=2, ejection_seconds=30)
    assert not inst.available(0 + inst.ejected_until - 1) and inst.available(inst.ejected_until + 1)


def test_platform_readiness_keeps_an_instance_out() -> None:
    reg = Registry(lambda name: RoutePolicy())
    reg.update(
        [DiscoveredService("a", "/api/a", ("http://a1", "http://a2"), ready={"http://a2": False})]
    )
    assert {reg.upstreams["a"].pick().url for _ in range(4)} == {"http://a1"}  # type: ignore[union-attr]


def test_memory_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("bhiv.gateway.ratelimit.time.monotonic", lambda: now[0])
    spec = RateSpec(rate=2, burst=3)
    buckets = MemoryBuckets()
    assert [buckets.take("k", spec, 1)[0] for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert buckets.take("k", spec, 1) == (True, 0.0)
    now[0] += 100
    assert buckets.take("k", spec, 1) == (True, 2.0)  # capped at the burst


def test_ratelimit_fields() -> None:
    spec = RateSpec(rate=0.5, burst=10)
    ok = Decision("ip", spec, True, 7.25)
    refused = Decision("key", RateSpec(rate=2, burst=4), False, 0.5)
    headers = dict(rate_limit_headers([ok, refused]))
    assert headers[b"ratelimit-policy"] == b'"ip";q=10;w=20, "key";q=4;w=2'
    assert headers[b"ratelimit"] == b'"ip";r=7;t=2, "key";r=0;t=1'
    assert headers[b"retry-after"] == b"1"
    assert b"retry-after" not in dict(rate_limit_headers([ok]))
    assert Decision("ip", spec, True, 10).next_token_seconds == 0


def test_retry_budget(monkeypatch: pytest.MonkeyPatch) -> None:

    now = [0.0]
    monkeypatch.setattr("bhiv.gateway.forwarder.time.monotonic", lambda: now[0])
    budget = RetryBudget(ratio=0.2, min_per_second=0)
    assert not budget.withdraw()
    for _ in range(5):
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()  # one retry per five requests
    floor = RetryBudget(ratio=0, min_per_second=2)
    assert floor.withdraw() and floor.withdraw() and not floor.withdraw()
    now[0] += 1.0
    floor.deposit()
    assert floor.withdraw() and floor.withdraw() and not floor.withdraw()


def test_roles_per_route() -> None:
    policy = RoutePolicy.model_validate(
        {
            "rules": [
                {"path": "/admin", "role": "admin"},
                {"path": "/admin/read", "methods": ["GET"], "role": "viewer"},
            ],
            "public_paths": ["/public"],
        }
    )
    role = EdgeAuth.required_role
    assert role(policy, "GET", "/items") == "viewer" and role(policy, "POST", "/items") == "editor"
    assert (
        role(policy, "GET", "/admin/users") == "admin"
        and role(policy, "GET", "/admin/read/x") == "viewer"
    )
    assert (
        role(policy, "POST", "/admin/read/x") == "admin"
        and role(policy, "GET", "/administrator") == "viewer"
    )
    assert EdgeAuth.is_public(policy, "/public/x") and not EdgeAuth.is_public(policy, "/publicity")
    EdgeAuth.authorize(Identity("u", ("admin",), "jwt"), "editor")
    with pytest.raises(Problem) as denied:
        EdgeAuth.authorize(Identity("u", ("viewer", "unknown"), "jwt"), "editor")
    assert denied.value.status == 403


def test_upstreams_setting() -> None:
    s = GatewaySettings(
        gateway_upstreams=json.loads(
            '{"logistics": ["http://h:1/"], "x": {"urls": ["http://x"], "prefix": "/api/x"}}'
        )
    )
    assert s.gateway_upstreams["logistics"].urls == ["http://h:1"]  # type: ignore[index]
    bad: object
    for bad in (
        {"billing": ["http://b"]},
        {"gateway": ["http://g"]},
        {"x": {"urls": ["http://x"], "prefix": "/x"}},
        {"logistics": ["ftp://h"]},
        {"logistics": []},
    ):
        with pytest.raises(ValidationError):
            GatewaySettings(gateway_upstreams=bad)


def test_openapi_merge_renames_schemas_and_refs() -> None:
    base = {"openapi": "3.1.0", "info": {"title": "gw", "version": "1"}, "paths": {"/services": {}}}
    doc = {
        "info": {"title": "Logistics", "version": "2"},
        "paths": {
            "/items/{id}": {
                "get": {
                    "operationId": "get_item",
                    "tags": ["inventory"],
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Item"}
                                }
                            }
                        }
                    },
                },
                "parameters": [{"name": "id", "in": "path"}],
            }
        },
        "components": {
            "schemas": {
                "Item": {"properties": {"p": {"$ref": "#/components/schemas/ProblemDetail"}}},
                "ProblemDetail": {},
            }
        },
        "tags": [{"name": "inventory"}],
    }
    out = merge(
        base,
        {"logistics": ("/api/logistics", doc), "crm": ("/api/crm", {"paths": {"/": {"get": {}}}})},
    )
    op = out["paths"]["/api/logistics/items/{id}"]["get"]
    assert op["operationId"] == "logistics.get_item" and op["tags"] == ["logistics: inventory"]
    assert (
        op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        == "#/components/schemas/logistics.Item"
    )
    schemas = out["components"]["schemas"]
    assert (
        schemas["logistics.Item"]["properties"]["p"]["$ref"]
        == "#/components/schemas/logistics.ProblemDetail"
    )
    assert out["paths"]["/api/crm/"]["get"]["tags"] == ["crm"]
    assert {"name": "logistics: inventory"} in out["tags"] and "/services" in out["paths"]
    assert base["paths"] == {"/services": {}}  # the base document is not changed


def test_minted_tokens_carry_the_whole_identity_and_never_outlive_the_caller(tmp_path) -> None:  # noqa: ANN001
    import time

    import jwt

    settings = GatewaySettings(jwt_secret=TEST_JWT_SECRET, data_dir=tmp_path)
    auth = EdgeAuth(settings, None)  # type: ignore[arg-type]
    soon = int(time.time()) + 40

    def claims(identity: Identity) -> dict:
        header = dict(auth.upstream_credentials(identity, None))[b"authorization"].decode()
        return jwt.decode(
            header.removeprefix("Bearer "),
            settings.jwt_signing_secret(),
            algorithms=["HS256"],
            audience="bhiv",
        )

    acme = Identity("dev", ("editor",), "api_key", tenant="acme")
    globex = Identity("dev", ("editor",), "api_key", tenant="globex")
    assert claims(acme)["tenant"] == "acme" and claims(globex)["tenant"] == "globex"
    assert claims(acme) == claims(acme)  # reused while fresh
    short = Identity("dev", ("editor",), "jwt", tenant="acme", claims={"exp": soon})
    assert claims(short)["exp"] <= soon
    expired = Identity("dev", ("editor",), "jwt", claims={"exp": int(time.time()) - 1})
    with pytest.raises(Problem) as caught:
        auth.upstream_credentials(expired, None)
    assert caught.value.status == 401


def test_memory_buckets_stay_bounded_under_address_spraying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("bhiv.gateway.ratelimit.time.monotonic", lambda: now[0])
    spec = RateSpec(rate=1, burst=2)
    buckets = MemoryBuckets(capacity=1000)
    assert [buckets.take("victim", spec, 1)[0] for _ in range(3)] == [True, True, False]
    for n in range(999):  # a sprayer fills the table
        buckets.take(f"spray-{n}", spec, 1)
    assert len(buckets) == 1000
    for n in range(999, 50_000):
        buckets.take(f"spray-{n}", spec, 1)
    assert len(buckets) == 1000  # never more, however many addresses
    now[0] += 2  # idle long enough to be full: expired, the same as a fresh bucket
    buckets.take("new", spec, 1)
    assert len(buckets) == 1


def test_public_operations_come_from_the_services_openapi() -> None:
    from bhiv.gateway.openapi import public_operations

    doc = {
        "paths": {
            "/webhooks/{source}": {"post": {"x-bhiv-public": True}, "get": {}},
            "/webhook-sources": {"get": {"x-bhiv-public": "yes"}},  # only a literal true counts
            "/a.b/{x}/c": {"get": {"x-bhiv-public": True}, "parameters": []},
        }
    }
    ops = public_operations(doc)
    up = registry().upstreams["a"]
    up.public_operations = ops
    assert up.declares_public("POST", "/webhooks/acme") and not up.declares_public(
        "GET", "/webhooks/acme"
    )
    assert not up.declares_public("POST", "/webhooks/acme/x") and not up.declares_public(
        "POST", "/webhooks/"
    )
    assert not up.declares_public("GET", "/webhook-sources")
    assert up.declares_public("HEAD", "/a.b/1/c") and not up.declares_public("GET", "/aXb/1/c")
    assert public_operations({"paths": ["junk"]}) == () and public_operations({}) == ()


def test_metrics_can_be_turned_off(tmp_path) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from bhiv.gateway.service import create_app

    app = create_app(
        GatewaySettings(metrics_access="off", jwt_secret=TEST_JWT_SECRET, data_dir=tmp_path)
    )
    answer = TestClient(app).get("/metrics")
    assert answer.status_code == 404 and answer.json()["type"].endswith("/not-found")
