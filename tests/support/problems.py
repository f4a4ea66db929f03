"""Checks of RFC 9457 problem answers, shared by every service's tests."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(
    r: httpx.Response, status: int, field: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """``r`` is a problem+json answer with ``status``, naming ``field`` and of
    problem type ``kind`` (the last segment of ``type``) if given."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["request_id"]
    if field is not None:
        assert field in {e["field"] for e in body.get("errors") or []}, body
    if kind is not None:
        assert body["type"].endswith("/" + kind), body
    return body
