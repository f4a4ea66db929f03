"""Builders and checks shared by the integrations service tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.service.integrations.peers import wait_until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    return r.json()


def new_source(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    return created(api.post("/webhook-sources", json={"name": unique("src"), **fields}))


def new_subscription(
    api: httpx.Client, url: str, types: list[str], **fields: Any
) -> dict[str, Any]:
    return created(api.post("/subscriptions", json={"url": url, "event_types": types, **fields}))


def event(type: str = "test.happened", **data: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": type,
        "source": "tests",
        "occurred_at": "2026-11-26T10:00:00Z",
        "data": data,
    }


def deliveries(api: httpx.Client, subscription_id: int, **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/subscriptions/{subscription_id}/deliveries", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def settled(
    api: httpx.Client, subscription_id: int, count: int, status: str, timeout: float = 30
) -> list[dict]:
    """Wait until ``count`` deliveries of the subscription have ``status``."""
    return wait_until(
        lambda: len(got := deliveries(api, subscription_id, status=status)) >= count and got,
        timeout,
        f"{count} {status} deliveries",
    )


def finished_run(api: httpx.Client, run_id: int, timeout: float = 30) -> dict[str, Any]:
    return wait_until(
        lambda: (
            (r := api.get(f"/sync-runs/{run_id}").json())["status"] in ("succeeded", "failed") and r
        ),
        timeout,
        f"sync run {run_id}",
    )
