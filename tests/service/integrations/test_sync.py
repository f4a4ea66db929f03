"""Supplier sync from a paginated, cursor-based vendor API into a real Logistics
service: incremental runs, field mapping, the conflict policy, failures and
schedules, with run history counts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import run_service
from tests.service.integrations.conftest import FAST
from tests.service.integrations.helpers import created, finished_run, unique
from tests.service.integrations.peers import Source, source, wait_until
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess

TOKEN = "vendor-api-token-3f9a"
FIELD_MAP = {
    "name": "company",
    "email": "contact.email",
    "lead_time_days": "lead_days",
    "rating": "score",
}


@dataclass
class Setup:
    integrations: ServiceProcess
    logistics: ServiceProcess
    vendors: Source


@pytest.fixture(scope="module")
def services(
    backend: str, request: pytest.FixtureRequest
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    logistics_run = run_service("logistics", backend, request)
    logistics = next(logistics_run)
    try:
        for integrations in run_service(
            "integrations", backend, request, **FAST, BHIV_LOGISTICS_URL=logistics.url
        ):
            yield integrations, logistics
    finally:
        logistics_run.close()


@pytest.fixture
def setup(services: tuple[ServiceProcess, ServiceProcess]) -> Iterator[Setup]:
    """The shared services, and a vendor API of the test's own (so each job sees only its records)."""
    with source(TOKEN) as vendors:
        yield Setup(*services, vendors)


def job(setup: Setup, **fields: Any) -> dict[str, Any]:
    api = setup.integrations.client()
    conn = created(
        api.post(
            "/connections",
            json={
                "name": unique("vendors"),
                "base_url": setup.vendors.url,
                "auth_type": "bearer",
                "credentials": {"token": TOKEN},
            },
        )
    )
    body = {
        "name": unique("sync"),
        "connection_id": conn["id"],
        "source_path": "/vendors",
        "records_path": "data.vendors",
        "key_field": "vendor_id",
        "cursor_field": "updated_at",
        "cursor_param": "updated_since",
        "page_param": "cursor",
        "next_page_path": "next",
        "page_size_param": "limit",
        "page_size": 2,
        "target": "logistics.suppliers",
        "field_map": FIELD_MAP,
    }
    return created(api.post("/sync-jobs", json=body | fields))


def run(setup: Setup, job_id: int) -> dict[str, Any]:
    r = setup.integrations.client().post(f"/sync-jobs/{job_id}/runs")
    assert r.status_code == 202, r.text
    return finished_run(setup.integrations.client(), r.json()["id"])


def supplier(setup: Setup, name: str) -> dict[str, Any]:
    items = setup.logistics.client().get("/suppliers", params={"q": name}).json()["items"]
    [found] = [s for s in items if s["name"] == name]
    return found


def counts(r: dict[str, Any]) -> tuple[int, int, int, int]:
    return r["created"], r["updated"], r["skipped"], r["failed"]


def vendor(setup: Setup, key: str, company: str, **extra: Any) -> None:
    fields = {
        "company": company,
        "contact": {"email": f"{key}@vendor.example"},
        "lead_days": 5,
        "score": 4.5,
    }
    setup.vendors.put(key, **(fields | extra))


def test_incremental_sync_picks_up_only_what_changed(setup: Setup) -> None:
    prefix = unique("V")
    for n in range(5):
        vendor(setup, f"{prefix}-{n}", f"{prefix} Co {n}")
    j = job(setup)

    first = run(setup, j["id"])
    assert first["status"] == "succeeded", first
    assert counts(first) == (5, 0, 0, 0) and first["pages"] == 3 and first["cursor_before"] is None
    made = supplier(setup, f"{prefix} Co 3")
    assert (
        made["email"] == f"{prefix}-3@vendor.example"
        and made["lead_time_days"] == 5
        and made["rating"] == "4.5"
    )

    requests_before = len(setup.vendors.requests)
    vendor(setup, f"{prefix}-1", f"{prefix} Co 1", lead_days=9)
    vendor(setup, f"{prefix}-5", f"{prefix} Co 5")
    second = run(setup, j["id"])
    assert counts(second) == (1, 1, 0, 0) and second["cursor_before"] == first["cursor_after"]
    # Only the two changed records were asked for and sent, on one page.
    asked = setup.vendors.requests[requests_before:]
    assert [q.get("updated_since") for q in asked] == [first["cursor_after"]]
    assert supplier(setup, f"{prefix} Co 1")["lead_time_days"] == 9

    third = run(setup, j["id"])
    assert counts(third) == (0, 0, 0, 0) and third["cursor_after"] == second["cursor_after"]
    history = setup.integrations.client().get(f"/sync-jobs/{j['id']}/runs").json()
    assert [r["id"] for r in history["items"]] == [third["id"], second["id"], first["id"]]
    assert (
        setup.integrations.client().get(f"/sync-jobs/{j['id']}").json()["cursor_value"]
        == third["cursor_after"]
    )


def test_existing_suppliers_are_matched_by_name_and_unchanged_ones_skipped(setup: Setup) -> None:
    name = unique("Existing")
    email = f"{unique('x')}@vendor.example"
    body = {"name": name, "email": email, "lead_time_days": 5, "rating": "4.5"}
    existing = created(setup.logistics.client().post("/suppliers", json=body))
    setup.vendors.put(
        unique("k"), company=f"  {name} ", contact={"email": email}, lead_days="5", score="4.50"
    )
    result = run(setup, job(setup)["id"])
    assert counts(result) == (0, 0, 1, 0), result
    assert supplier(setup, name)["id"] == existing["id"]


def test_conflict_policy(setup: Setup) -> None:
    for policy, expect_lead_time in (("source_wins", 12), ("bhiv_wins", 30)):
        key = unique("c")
        name = unique("Conflicted")
        vendor(setup, key, name)
        j = job(setup, conflict_policy=policy)
        run(setup, j["id"])
        bhiv = supplier(setup, name)
        # Edited in BHIV, then changed at the source too.
        assert (
            setup.logistics.client()
            .patch(f"/suppliers/{bhiv['id']}", json={"lead_time_days": 30})
            .status_code
            == 200
        )
        vendor(setup, key, name, lead_days=12)
        result = run(setup, j["id"])
        assert result["conflicts"] == 1, result
        assert supplier(setup, name)["lead_time_days"] == expect_lead_time
        if policy == "source_wins":
            assert counts(result)[:3] == (0, 1, 0)
        else:
            assert counts(result)[:3] == (0, 0, 1)


def test_bad_records_fail_alone_and_are_named(setup: Setup) -> None:
    prefix = unique("B")
    vendor(setup, f"{prefix}-ok", f"{prefix} fine")
    setup.vendors.put(f"{prefix}-bad", company=f"{prefix} bad", contact={"email": "not-an-email"})
    setup.vendors.put(f"{prefix}-anon", contact={"email": "anon@vendor.example"})
    j = job(setup)
    result = run(setup, j["id"])
    assert result["status"] == "succeeded"
    mine = {e["key"]: e["message"] for e in result["record_errors"]}
    assert f"{prefix}-bad" in mine and "422" in mine[f"{prefix}-bad"]
    assert "without name" in mine[f"{prefix}-anon"]


def test_source_failures_fail_the_run_and_keep_the_cursor(setup: Setup) -> None:
    vendor(setup, unique("f"), unique("Flaky"))
    j = job(setup)
    setup.vendors.fail_next = 1  # one 503 is retried
    assert run(setup, j["id"])["status"] == "succeeded"
    saved = setup.integrations.client().get(f"/sync-jobs/{j['id']}").json()["cursor_value"]
    vendor(setup, unique("f"), unique("Flaky"))
    setup.vendors.fail_next = 3
    failed = run(setup, j["id"])
    assert failed["status"] == "failed" and "503" in failed["error"]
    assert setup.integrations.client().get(f"/sync-jobs/{j['id']}").json()["cursor_value"] == saved
    assert run(setup, j["id"])["created"] == 1  # the next run catches up


def test_scheduled_jobs_run_by_themselves(setup: Setup) -> None:
    name = unique("Scheduled")
    vendor(setup, unique("s"), name)
    j = job(setup, interval_seconds=1)
    wait_until(
        lambda: setup.integrations.client().get(f"/sync-jobs/{j['id']}/runs").json()["total"] >= 2,
        30,
        "2 runs",
    )
    runs = setup.integrations.client().get(f"/sync-jobs/{j['id']}/runs").json()["items"]
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert supplier(setup, name)
    setup.integrations.client().patch(f"/sync-jobs/{j['id']}", json={"enabled": False})


def test_job_validation(setup: Setup) -> None:
    api = setup.integrations.client()
    base = {
        "name": unique("v"),
        "connection_id": 2**31 - 1,
        "source_path": "/x",
        "target": "logistics.suppliers",
        "field_map": {"name": "n"},
    }
    assert_problem(api.post("/sync-jobs", json=base), 422, "connection_id")
    conn = job(setup)["connection_id"]
    assert_problem(
        api.post("/sync-jobs", json=base | {"connection_id": conn, "field_map": {"colour": "c"}}),
        422,
        "field_map.colour",
    )
    assert_problem(
        api.post("/sync-jobs", json=base | {"connection_id": conn, "field_map": {"name": "a..b"}}),
        422,
        "field_map.name",
    )
    assert_problem(
        api.post("/sync-jobs", json=base | {"connection_id": conn, "target": "crm.leads"}),
        422,
        "target",
    )
    # A connection in use cannot be deleted.
    assert_problem(api.delete(f"/connections/{conn}"), 409)


def test_a_second_run_while_one_is_queued_is_409(setup: Setup) -> None:
    j = job(setup)
    api = setup.integrations.client()
    first = api.post(f"/sync-jobs/{j['id']}/runs")
    second = api.post(f"/sync-jobs/{j['id']}/runs")
    assert first.status_code == 202
    if second.status_code != 202:  # the first may already have finished
        assert_problem(second, 409)
    finished_run(api, first.json()["id"])


def test_logistics_down_fails_the_run(setup: Setup, request: pytest.FixtureRequest) -> None:
    vendor(setup, unique("d"), unique("Down"))
    j = job(setup)
    setup.logistics.stop()
    try:
        failed = run(setup, j["id"])
    finally:
        setup.logistics.start()
    assert failed["status"] == "failed" and "logistics is unavailable" in failed["error"]
    assert failed["cursor_after"] is None
    assert run(setup, j["id"])["created"] == 1


def test_unknown_ids(setup: Setup) -> None:
    api = setup.integrations.client()
    for path in ("/sync-jobs/999999", "/sync-runs/999999", "/connections/999999"):
        assert_problem(api.get(path), 404)
    assert_problem(httpx.get(f"{setup.integrations.url}/sync-jobs"), 401)
