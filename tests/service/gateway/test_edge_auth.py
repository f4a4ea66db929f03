"""Authentication at the edge: JWTs and API keys, the token endpoint, roles per route, CORS."""

from __future__ import annotations

import time

import httpx
import jwt

from tests.service.gateway.conftest import EDITOR_KEY, VIEWER_KEY
from tests.support.servers import TEST_JWT_SECRET, ServiceProcess


def bearer(gateway: ServiceProcess, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token(role)}"}


def upstream_header(r: httpx.Response, name: str) -> list[str]:
    return [v for k, v in r.json()["headers"] if k == name]


def test_credentials_are_required_and_checked(gateway: ServiceProcess) -> None:
    url = f"{gateway.url}/api/echo/x"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.headers["content-type"] == "application/problem+json"
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
    assert httpx.get(url, headers={"X-API-Key": "wrong"}).status_code == 401
    expired = jwt.encode(
        {"sub": "x", "roles": ["admin"], "exp": int(time.time()) - 5, "iss": "bhiv", "aud": "bhiv"},
        TEST_JWT_SECRET,
        algorithm="HS256",
    )
    r = httpx.get(url, headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # Nothing reached the service.
    assert httpx.get(url, headers=bearer(gateway, "viewer")).status_code == 200


def test_roles_per_route(gateway: ServiceProcess) -> None:
    viewer, editor, admin = (bearer(gateway, r) for r in ("viewer", "editor", "admin"))
    assert httpx.get(f"{gateway.url}/api/echo/items", headers=viewer).status_code == 200
    denied = httpx.post(f"{gateway.url}/api/echo/items", headers=viewer)
    assert denied.status_code == 403 and "'editor' role" in denied.json()["detail"]
    assert httpx.post(f"{gateway.url}/api/echo/items", headers=editor).status_code == 200
    # Configured rules: /admin needs admin for every method; GET /reports needs editor.
    assert httpx.get(f"{gateway.url}/api/echo/admin/users", headers=editor).status_code == 403
    assert httpx.get(f"{gateway.url}/api/echo/admin/users", headers=admin).status_code == 200
    assert (
        httpx.get(f"{gateway.url}/api/echo/administrators", headers=viewer).status_code == 200
    )  # not under /admin
    assert httpx.get(f"{gateway.url}/api/echo/reports/q1", headers=viewer).status_code == 403
    assert httpx.get(f"{gateway.url}/api/echo/reports/q1", headers=editor).status_code == 200
    # A public path needs no credential.
    assert httpx.get(f"{gateway.url}/api/echo/public/status").status_code == 200


def test_a_callers_jwt_is_forwarded_unchanged(gateway: ServiceProcess) -> None:
    headers = bearer(gateway, "viewer")
    r = httpx.get(f"{gateway.url}/api/echo/who", headers=headers)
    assert upstream_header(r, "authorization") == [headers["Authorization"]]
    assert upstream_header(r, "x-bhiv-subject") == ["tester"] and upstream_header(
        r, "x-bhiv-roles"
    ) == ["viewer"]


def test_api_keys_become_short_lived_jwts_upstream(gateway: ServiceProcess) -> None:
    r = httpx.get(f"{gateway.url}/api/echo/who", headers={"X-API-Key": VIEWER_KEY})
    assert r.status_code == 200
    assert upstream_header(r, "x-api-key") == []  # the key never leaves the edge
    (auth,) = upstream_header(r, "authorization")
    claims = jwt.decode(
        auth.removeprefix("Bearer "), TEST_JWT_SECRET, algorithms=["HS256"], audience="bhiv"
    )
    assert claims["sub"] == "apikey:ci-viewer" and claims["roles"] == ["viewer"]
    assert claims["exp"] - time.time() <= 300
    assert (
        httpx.post(f"{gateway.url}/api/echo/who", headers={"X-API-Key": VIEWER_KEY}).status_code
        == 403
    )
    assert (
        httpx.post(f"{gateway.url}/api/echo/who", headers={"X-API-Key": EDITOR_KEY}).status_code
        == 200
    )


def test_token_endpoint_exchanges_an_api_key(gateway: ServiceProcess) -> None:
    r = httpx.post(f"{gateway.url}/auth/token", headers={"X-API-Key": EDITOR_KEY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["roles"] == ["editor"]
    )
    assert r.headers["cache-control"] == "no-store"
    claims = jwt.decode(
        body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"], audience="bhiv"
    )
    assert claims["sub"] == "apikey:ci-editor" and 890 <= claims["exp"] - time.time() <= 900
    used = httpx.post(
        f"{gateway.url}/api/echo/x", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert used.status_code == 200
    assert httpx.post(f"{gateway.url}/auth/token").status_code == 401
    assert httpx.post(f"{gateway.url}/auth/token", headers={"X-API-Key": "nope"}).status_code == 401
    # A token is not an API key.
    assert (
        httpx.post(f"{gateway.url}/auth/token", headers=bearer(gateway, "admin")).status_code == 401
    )


def test_cors_is_the_edges_policy(gateway: ServiceProcess) -> None:
    preflight = httpx.options(
        f"{gateway.url}/api/echo/x",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.get(
        f"{gateway.url}/api/echo/x",
        headers={"Origin": "https://app.example", **bearer(gateway, "viewer")},
    )
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "RateLimit" in r.headers["access-control-expose-headers"]
    other = httpx.get(
        f"{gateway.url}/api/echo/x",
        headers={"Origin": "https://evil.example", **bearer(gateway, "viewer")},
    )
    assert (
        "access-control-allow-origin" not in other.headers
    )  # the service's own '*' is dropped too
