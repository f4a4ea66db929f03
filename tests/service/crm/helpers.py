"""Builders and checks shared by the CRM service tests."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.servers import ServiceProcess

PIPELINE = ("contacted", "qualified", "proposal", "won")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def email() -> str:
    return f"{unique('c')}@example.com"


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    return r.json()


def new_customer(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    return created(api.post("/customers", json={"name": "Asha Rao", "email": email(), **fields}))


def new_lead(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    return created(api.post("/leads", json={"name": "Ravi Menon", "email": email(), **fields}))


def won_lead(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    lead = new_lead(api, **fields)
    for stage in PIPELINE:
        r = api.post(f"/leads/{lead['id']}/transitions", json={"stage": stage})
        assert r.status_code == 200, r.text
        lead = r.json()
    return lead


def new_ticket(api: httpx.Client, customer_id: int, **fields: Any) -> dict[str, Any]:
    return created(
        api.post(
            "/tickets", json={"customer_id": customer_id, "subject": "Printer on fire", **fields}
        )
    )


def total(api: httpx.Client, path: str, **params: Any) -> int:
    r = api.get(path, params={"limit": 1, **params})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def in_parallel(
    service: ServiceProcess, requests: list[tuple[str, str, Any]], role: str = "editor"
) -> list[httpx.Response]:
    """Send (method, path, json) requests at once, each on its own connection."""
    token = service.token(role)

    def send(request: tuple[str, str, Any]) -> httpx.Response:
        method, path, body = request
        with httpx.Client(
            base_url=service.url, timeout=60, headers={"Authorization": f"Bearer {token}"}
        ) as c:
            return c.request(method, path, json=body)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))
