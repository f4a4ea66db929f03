"""Agents and tasks: registration, routing to the least-loaded agent, priority
with aging, leases that expire and requeue, heartbeats, cancellation."""

from __future__ import annotations

import time

import httpx

from tests.service.agents.helpers import unique, wait_for, wait_task
from tests.support.fake_openai import Fail, FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def register(api: httpx.Client, **body: object) -> dict:
    body.setdefault("name", unique("agent"))
    r = api.post("/agents", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def submit(api: httpx.Client, capability: str, **body: object) -> dict:
    r = api.post("/tasks", json={"capability": capability, **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_register_get_list_pause_deregister(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("cap").replace("-", "_")
    agent = register(api, kind="external", capabilities=[cap, cap, "other"], max_concurrency=3)
    assert (
        agent["capabilities"] == sorted({cap, "other"})
        and agent["online"]
        and agent["running"] == 0
    )
    assert api.get(f"/agents/{agent['id']}").json()["name"] == agent["name"]
    listed = api.get("/agents", params={"capability": cap}).json()
    assert [a["id"] for a in listed["items"]] == [agent["id"]]
    assert_problem(
        api.post(
            "/agents", json={"name": agent["name"], "kind": "external", "capabilities": ["x"]}
        ),
        409,
        field="name",
    )
    paused = api.patch(f"/agents/{agent['id']}", json={"status": "paused"}).json()
    assert paused["status"] == "paused"
    assert_problem(api.post(f"/agents/{agent['id']}/claim", json={}), 409, kind="conflict")
    assert api.delete(f"/agents/{agent['id']}").status_code == 204
    assert_problem(api.get(f"/agents/{agent['id']}"), 404, kind="not-found")


def test_bad_agents_are_refused_naming_the_field(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    assert_problem(
        api.post("/agents", json={"name": "x", "kind": "robot", "capabilities": ["a"]}),
        422,
        field="kind",
    )
    assert_problem(
        api.post("/agents", json={"name": "x", "kind": "external", "capabilities": []}),
        422,
        field="capabilities",
    )
    assert_problem(
        api.post(
            "/agents",
            json={"name": "x", "kind": "external", "capabilities": ["a"], "max_concurrency": 0},
        ),
        422,
        field="max_concurrency",
    )
    assert_problem(
        api.post("/agents", json={"name": "x", "kind": "http", "capabilities": ["a"]}), 422
    )
    # An http agent makes the service call any URL: admins only.
    assert_problem(
        api.post(
            "/agents",
            json={"name": "x", "kind": "http", "capabilities": ["a"], "url": "http://127.0.0.1:9/"},
        ),
        403,
    )
    assert_problem(
        agents.client("viewer").post(
            "/agents", json={"name": "x", "kind": "external", "capabilities": ["a"]}
        ),
        403,
    )


def test_external_agent_claims_by_priority_within_capacity(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("prio").replace("-", "_")
    low = submit(api, cap, priority=0, payload={"n": "low"})
    high = submit(api, cap, priority=50, payload={"n": "high"})
    agent = register(api, kind="external", capabilities=[cap], max_concurrency=1)
    claimed = api.post(f"/agents/{agent['id']}/claim", json={"max_tasks": 5}).json()
    assert [t["id"] for t in claimed] == [high["id"]]  # highest first, and only one: capacity 1
    assert claimed[0]["status"] == "running" and claimed[0]["agent_id"] == agent["id"]
    token = claimed[0]["lease_token"]
    assert api.post(f"/agents/{agent['id']}/claim", json={}).json() == []  # still full
    done = api.post(
        f"/tasks/{high['id']}/complete", json={"lease_token": token, "result": {"ok": 1}}
    ).json()
    assert done["status"] == "succeeded" and done["result"] == {"ok": 1}
    assert_problem(
        api.post(f"/tasks/{high['id']}/complete", json={"lease_token": token}),
        409,
        kind="lease-lost",
    )
    nxt = api.post(f"/agents/{agent['id']}/claim", json={}).json()
    assert [t["id"] for t in nxt] == [low["id"]]
    failed = api.post(
        f"/tasks/{low['id']}/fail", json={"lease_token": nxt[0]["lease_token"], "error": "nope"}
    ).json()
    assert failed["status"] == "failed" and failed["error"] == "nope"


def test_aging_lets_an_old_low_priority_task_overtake(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("aging").replace("-", "_")
    old = submit(api, cap, priority=0)
    time.sleep(3.2)  # one priority point per second of waiting (BHIV_AGENTS_AGING_SECONDS=1)
    newer = submit(api, cap, priority=2)
    agent = register(api, kind="external", capabilities=[cap], max_concurrency=5)
    claimed = api.post(f"/agents/{agent['id']}/claim", json={"max_tasks": 5}).json()
    assert [t["id"] for t in claimed] == [old["id"], newer["id"]]


def test_expired_lease_requeues_then_fails_when_out_of_attempts(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("lease").replace("-", "_")
    task = submit(api, cap, max_attempts=2)
    agent = register(api, kind="external", capabilities=[cap], max_concurrency=2)
    first = api.post(f"/agents/{agent['id']}/claim", json={"lease_seconds": 1}).json()[0]
    # A heartbeat keeps the lease alive past its first expiry.
    time.sleep(0.6)
    beat = api.post(
        f"/tasks/{task['id']}/heartbeat",
        json={"lease_token": first["lease_token"], "extend_seconds": 1},
    )
    assert beat.status_code == 200, beat.text
    time.sleep(0.6)
    assert api.get(f"/tasks/{task['id']}").json()["status"] == "running"
    requeued = wait_for(
        lambda: api.get(f"/tasks/{task['id']}").json(), lambda t: t["status"] == "queued", 10
    )
    assert (
        requeued["attempts"] == 1
        and "lease expired" in requeued["error"]
        and requeued["agent_id"] is None
    )
    assert_problem(
        api.post(f"/tasks/{task['id']}/heartbeat", json={"lease_token": first["lease_token"]}),
        409,
        kind="lease-lost",
    )
    second = api.post(f"/agents/{agent['id']}/claim", json={"lease_seconds": 1}).json()[0]
    assert second["attempts"] == 2 and second["lease_token"] != first["lease_token"]
    final = wait_task(api, task["id"], 10)
    assert final["status"] == "failed" and "lease expired on attempt 2" in final["error"]


def test_cancel_a_queued_task(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    task = submit(api, unique("nobody").replace("-", "_"))
    cancelled = api.post(f"/tasks/{task['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    body = assert_problem(api.post(f"/tasks/{task['id']}/cancel"), 409, kind="illegal-transition")
    assert body["current"] == "cancelled" and body["allowed"] == []
    assert_problem(
        api.post("/tasks", json={"capability": "x", "priority": 101}), 422, field="priority"
    )
    assert_problem(api.post("/tasks", json={"capability": "Bad Cap"}), 422, field="capability")


def test_builtin_http_agents_least_loaded_routing_and_retries(
    agents: ServiceProcess, target: FakeOpenAI
) -> None:
    admin = agents.client("admin")
    cap = unique("http").replace("-", "_")
    url = f"{target.base_url}/chat/completions"
    a = register(admin, kind="http", capabilities=[cap], url=url, max_concurrency=1)
    b = register(admin, kind="http", capabilities=[cap], url=url, max_concurrency=1)
    target.default("slow-model", Reply("done", delay=1.0))
    body = {"model": "slow-model", "messages": [{"role": "user", "content": "hi"}]}
    t1, t2, t3 = (submit(admin, cap, payload=body) for _ in range(3))
    # Two run at once, one on each agent; the third waits for a free one.
    running = wait_for(
        lambda: admin.get("/tasks", params={"capability": cap, "status": "running"}).json(),
        lambda p: p["total"] == 2,
        10,
    )
    assert {t["agent_id"] for t in running["items"]} == {a["id"], b["id"]}
    assert admin.get(f"/tasks/{t3['id']}").json()["status"] == "queued"
    results = [wait_task(admin, t["id"]) for t in (t1, t2, t3)]
    assert all(r["status"] == "succeeded" for r in results), results
    assert results[0]["result"]["choices"][0]["message"]["content"] == "done"
    assert results[0]["payload"] == body and target.calls_for("slow-model")[-1].body == body

    # A 5xx is retried while attempts remain; a 4xx is not.
    target.script("flaky", Fail(503), Reply("second time"))
    retried = wait_task(
        admin,
        submit(
            admin, cap, payload={"model": "flaky", "messages": body["messages"]}, max_attempts=2
        )["id"],
    )
    assert retried["status"] == "succeeded" and retried["attempts"] == 2
    target.script("refuses", Fail(400))
    refused = wait_task(
        admin,
        submit(
            admin, cap, payload={"model": "refuses", "messages": body["messages"]}, max_attempts=3
        )["id"],
    )
    assert refused["status"] == "failed" and refused["attempts"] == 1 and "400" in refused["error"]

    stats = admin.get("/stats").json()
    mine = {s["agent_id"]: s for s in stats["agents"] if s["agent_id"] in (a["id"], b["id"])}
    assert sum(s["succeeded"] for s in mine.values()) == 4
    assert sum(s["failed"] for s in mine.values()) == 1
    assert all(s["latency_avg_seconds"] is not None for s in mine.values())
    metrics = admin.get("/metrics").text
    assert f'bhiv_agent_tasks_total{{agent="{a["name"]}",outcome="succeeded"}}' in metrics
    assert "bhiv_task_queue_depth" in metrics or "bhiv_workflow_runs_total" in metrics


def test_queue_depth_in_stats_and_metrics(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("depth").replace("-", "_")
    for _ in range(3):
        submit(api, cap)
    queue = next(q for q in api.get("/stats").json()["queues"] if q["capability"] == cap)
    assert queue["queued"] == 3 and queue["running"] == 0 and queue["oldest_wait_seconds"] >= 0
    assert f'bhiv_task_queue_depth{{capability="{cap}"}} 3.0' in api.get("/metrics").text
