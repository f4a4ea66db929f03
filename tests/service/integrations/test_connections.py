"""Connections to a real external API on 127.0.0.1: auth, test calls, metrics,
rate limits, and credentials that are encrypted at rest and never shown."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.service.integrations.helpers import created, unique
from tests.service.integrations.peers import Source, source
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess

TOKEN = "tok-" + "7Hq2pXv9Lm4Rz8Kc"


@pytest.fixture(scope="module")
def api_server() -> Iterator[Source]:
    with source(TOKEN) as s:
        yield s


def connection(api, base_url: str, **fields: object) -> dict:
    body = {
        "name": unique("conn"),
        "base_url": base_url,
        "auth_type": "bearer",
        "credentials": {"token": TOKEN},
    }
    return created(api.post("/connections", json=body | fields))


def stored_rows(integrations: ServiceProcess) -> str:
    """Everything the connections table holds, as the database has it."""
    url = integrations.env.get("BHIV_DATABASE_URL")
    if url:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            return repr(conn.execute("SELECT * FROM connections").fetchall())
    with sqlite3.connect(integrations.data_dir / "integrations.db") as conn:
        return repr(conn.execute("SELECT * FROM connections").fetchall())


def test_test_call_health_and_metrics(integrations: ServiceProcess, api_server: Source) -> None:
    api = integrations.client()
    conn = connection(api, api_server.url, health_path="/health")
    assert conn["health"] == "unknown" and conn["has_credentials"] is True

    result = api.post(f"/connections/{conn['id']}/test").json()
    assert result["ok"] is True and result["status_code"] == 200 and result["error"] is None
    wrong_path = api.post(f"/connections/{conn['id']}/test", json={"path": "/nope"}).json()
    assert wrong_path["ok"] is False and wrong_path["status_code"] == 404

    seen = api.get(f"/connections/{conn['id']}").json()
    assert seen["health"] == "failing"
    metrics = seen["metrics"]
    assert metrics["calls"] == 2 and metrics["errors"] == 1 and metrics["error_rate"] == 0.5
    assert (
        metrics["last_status_code"] == 404
        and metrics["avg_latency_ms"] > 0
        and metrics["last_success_at"]
    )


def test_wrong_credentials_and_unreachable_hosts_are_reported(
    integrations: ServiceProcess, api_server: Source
) -> None:
    api = integrations.client()
    wrong = connection(api, api_server.url, credentials={"token": "wrong"}, health_path="/health")
    assert api.post(f"/connections/{wrong['id']}/test").json()["status_code"] == 401
    down = connection(api, "http://127.0.0.1:9", timeout_seconds=1)
    result = api.post(f"/connections/{down['id']}/test").json()
    assert (
        result["ok"] is False
        and result["status_code"] is None
        and "could not reach" in result["error"]
    )


def test_credentials_are_encrypted_never_returned_never_logged(
    integrations: ServiceProcess, api_server: Source
) -> None:
    api = integrations.client()
    secret = "pw-" + unique("basic")
    conn = connection(
        api, api_server.url, auth_type="basic", credentials={"username": "bhiv", "password": secret}
    )
    for text in (
        api.get(f"/connections/{conn['id']}").text,
        api.get("/connections", params={"limit": 500}).text,
        api.patch(f"/connections/{conn['id']}", json={"description": "changed"}).text,
    ):
        assert secret not in text and TOKEN not in text
    api.post(f"/connections/{conn['id']}/test")
    assert "gAAAA" in stored_rows(integrations)  # a Fernet token is what is stored
    assert secret not in stored_rows(integrations) and TOKEN not in stored_rows(integrations)
    assert secret not in integrations.log() and TOKEN not in integrations.log()


def test_bad_input_is_422_naming_the_field_and_nothing_is_saved(
    integrations: ServiceProcess,
) -> None:
    api = integrations.client()
    name = unique("bad")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"auth_type": "bearer", "credentials": {}}, "credentials.token"),
        ({"auth_type": "basic", "credentials": {"username": "u"}}, "credentials.password"),
        ({"auth_type": "none", "credentials": {"token": "t"}}, "credentials.token"),
        ({"auth_type": "api_key", "credentials": {"api_key": "a\nb"}}, "credentials.api_key"),
        ({"base_url": "http://user:pw@127.0.0.1/"}, "base_url"),
        ({"base_url": "https://api.partner.example/"}, "base_url"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"health_path": "no-slash"}, "health_path"),
    ]
    for fields, field in cases:
        body = {"name": name, "base_url": "http://127.0.0.1:9000/"} | fields
        assert_problem(api.post("/connections", json=body), 422, field)
    assert api.get("/connections", params={"q": name}).json()["total"] == 0
    assert_problem(
        integrations.client("editor").post(
            "/connections", json={"name": name, "base_url": "http://127.0.0.1/"}
        ),
        403,
    )


def test_changing_auth_type_needs_the_new_credentials(
    integrations: ServiceProcess, api_server: Source
) -> None:
    api = integrations.client()
    conn = connection(api, api_server.url)
    assert_problem(
        api.patch(f"/connections/{conn['id']}", json={"auth_type": "api_key"}),
        422,
        "credentials.api_key",
    )
    changed = api.patch(
        f"/connections/{conn['id']}",
        json={
            "auth_type": "api_key",
            "api_key_header": "X-Vendor-Key",
            "credentials": {"api_key": "k1"},
        },
    ).json()
    assert changed["auth_type"] == "api_key" and changed["api_key_header"] == "X-Vendor-Key"
    none = api.patch(f"/connections/{conn['id']}", json={"auth_type": "none"}).json()
    assert none["has_credentials"] is False and none["api_key_header"] is None


def test_rate_limit(integrations: ServiceProcess, api_server: Source) -> None:
    api = integrations.client()
    conn = connection(api, api_server.url, rate_limit_per_minute=1, health_path="/health")
    assert api.post(f"/connections/{conn['id']}/test").json()["ok"] is True
    limited = api.post(f"/connections/{conn['id']}/test")
    assert_problem(limited, 429)
    assert limited.headers["Retry-After"]


ESCAPING_PATHS = [
    "/../../internal/admin",
    "/%2e%2e/%2e%2e/internal/admin",
    "/%2E%2E/internal/admin",
    "/%252e%252e/internal/admin",  # double-encoded: a proxy in front of the API may decode once more
    "/..%2finternal%2fadmin",
    "//evil.example/internal/admin",
    "/..\\internal\\admin",
    "/api/./../internal",
]


def test_paths_never_leave_the_base_url_with_its_credential(
    integrations: ServiceProcess, api_server: Source
) -> None:
    api = integrations.client()
    conn = connection(api, f"{api_server.url}/api", health_path="/health")
    seen_before = len(api_server.paths)
    for path in ESCAPING_PATHS:
        assert_problem(
            api.post(f"/connections/{conn['id']}/test", json={"path": path}), 422, "path"
        )
        assert_problem(
            api.post(
                "/connections",
                json={
                    "name": unique("conn"),
                    "base_url": api_server.url,
                    "health_path": path,
                },
            ),
            422,
            "health_path",
        )
        assert_problem(
            api.patch(f"/connections/{conn['id']}", json={"health_path": path}), 422, "health_path"
        )
    # An absolute URL is not a path at all.
    assert_problem(
        api.post(f"/connections/{conn['id']}/test", json={"path": "http://evil.example/"}),
        422,
        "path",
    )
    assert (
        api_server.paths[seen_before:] == []
    )  # the API was never called, so the token went nowhere

    # A path under the base is still called there (this API answers 404 under /api).
    result = api.post(
        f"/connections/{conn['id']}/test", json={"path": "/v1/status?next=../x"}
    ).json()
    assert result["status_code"] == 404
    assert api_server.paths[seen_before:] == ["/api/v1/status?next=../x"]
