"""The workflow engine over real HTTP against a real Logistics service:
definitions and versions, DAG order and parallel branches, conditions,
retries, on_error, saga compensation, agent steps, and a restart mid-run."""

from __future__ import annotations

import time

from tests.service.agents.helpers import define, history, start, steps, unique, wait_for, wait_run
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def make_item(logistics: ServiceProcess, quantity: int = 10) -> dict:
    sku = unique("SKU").upper()
    r = logistics.client().post(
        "/inventory",
        json={
            "sku": sku,
            "name": "Widget",
            "quantity": quantity,
            "reorder_level": 1,
            "unit_cost": "2.50",
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_builtin_definitions_are_installed(agents: ServiceProcess) -> None:
    api = agents.client("viewer")
    names = {
        w["name"]: w
        for w in api.get("/workflows", params={"latest": True, "limit": 100}).json()["items"]
    }
    for name in (
        "customer-order-processing",
        "inventory-reorder",
        "ai-agent-task",
        "external-integration-sync",
        "multi-service-data-flow",
    ):
        assert names[name]["source"] == "builtin" and names[name]["version"] >= 1


def test_versions_and_bad_definitions(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("wf")
    one = define(api, name, {"id": "a", "type": "set", "value": 1})
    two = define(api, name, {"id": "a", "type": "set", "value": 2})
    assert (one["version"], two["version"]) == (1, 2)
    assert api.get(f"/workflows/{one['id']}").json()["spec"]["steps"][0]["value"] == 1
    run = wait_run(api, start(api, name)["id"])
    assert run["version"] == 2 and steps(run)["a"]["output"] == 2
    old = wait_run(api, api.post("/runs", json={"workflow": name, "version": 1}).json()["id"])
    assert steps(old)["a"]["output"] == 1

    bad = [
        (
            {"id": "a", "type": "set", "value": 1, "needs": ["ghost"]},
            "steps.0.needs",
            "unknown step",
        ),
        (
            {"id": "a", "type": "condition", "expression": "1 +"},
            "steps.0.expression",
            "invalid expression",
        ),
        ({"id": "a", "type": "service"}, "steps.0", "needs `call`"),
        (
            {"id": "a", "type": "set", "value": "{{ input. }}"},
            "steps.0.value",
            "invalid expression",
        ),
        ({"id": "a", "type": "set", "when": "__import__('os')"}, "steps.0.when", "not available"),
        (
            {"id": "a", "type": "set", "value": "{{ input.__class__ }}"},
            "steps.0.value",
            "private attribute",
        ),
    ]
    for step, field, message in bad:
        body = (
            assert_problem(
                api.post("/workflows", json={"name": name, "steps": [step]}), 422, field=field
            )
            if field != "steps.0"
            else assert_problem(api.post("/workflows", json={"name": name, "steps": [step]}), 422)
        )
        if message:
            assert message in body["detail"] or any(
                message in e["message"] for e in body["errors"]
            ), body
    cycle = [
        {"id": "a", "type": "set", "value": 1, "needs": ["b"]},
        {"id": "b", "type": "set", "value": 1, "needs": ["a"]},
    ]
    assert "cycle" in str(
        assert_problem(api.post("/workflows", json={"name": name, "steps": cycle}), 422)
    )
    assert_problem(
        api.post("/workflows", json={"name": "Bad Name", "steps": [{"id": "a", "type": "set"}]}),
        422,
        field="name",
    )
    assert_problem(
        api.post("/workflows", json={"name": name, "steps": [{"id": "a", "type": "launch"}]}),
        422,
        field="steps.0.type",
    )
    assert_problem(api.post("/runs", json={"workflow": unique("none")}), 422, field="workflow")
    assert_problem(api.post("/runs", json={"workflow": name, "version": 9}), 422, field="version")
    assert_problem(api.get("/runs/999999"), 404)


def test_dag_parallel_branches_conditions_and_waits(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    api = agents.client("editor")
    item = make_item(logistics)
    name = unique("dag")
    define(
        api,
        name,
        {
            "id": "item",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "GET",
                "path": "/inventory/sku/{{ input.sku }}",
            },
        },
        {"id": "pause_a", "type": "wait", "seconds": 1, "needs": ["item"]},
        {"id": "pause_b", "type": "wait", "seconds": 1, "needs": ["item"]},
        {
            "id": "plenty",
            "type": "condition",
            "needs": ["item"],
            "expression": "steps.item.output.quantity >= 5",
        },
        {
            "id": "if_plenty",
            "type": "set",
            "needs": ["plenty"],
            "when": "steps.plenty.output",
            "value": "yes",
        },
        {
            "id": "if_short",
            "type": "set",
            "needs": ["plenty"],
            "when": "not steps.plenty.output",
            "value": "no",
        },
        {
            "id": "join",
            "type": "set",
            "needs": ["pause_a", "pause_b", "if_plenty", "if_short"],
            "value": {
                "sku": "{{ steps.item.output.sku }}",
                "label": "Item {{ steps.item.output.id }} ok",
            },
        },
    )
    t0 = time.monotonic()
    run = wait_run(api, start(api, name, sku=item["sku"])["id"])
    assert run["status"] == "succeeded", run
    s = steps(run)
    assert s["if_plenty"]["status"] == "succeeded" and s["if_short"]["status"] == "skipped"
    assert s["join"]["output"] == {"sku": item["sku"], "label": f"Item {item['id']} ok"}
    assert time.monotonic() - t0 < 5  # the two one-second waits ran side by side
    a_end, b_start = s["pause_a"]["finished_at"], s["pause_b"]["started_at"]
    assert b_start < a_end  # parallel branches overlap
    kinds = [e["kind"] for e in history(api, run["id"])]
    assert kinds[0] == "run_started" and kinds[-1] == "run_succeeded" and "step_skipped" in kinds


def test_retries_with_backoff_then_on_error_policies(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("retry")
    # crm is configured at a closed port: every call fails as unreachable (retryable).
    define(
        api,
        name,
        {
            "id": "flaky",
            "type": "service",
            "on_error": "continue",
            "retry": {"max_attempts": 3, "initial_seconds": 0.2, "backoff_coefficient": 2},
            "call": {"service": "crm", "method": "GET", "path": "/customers"},
        },
        {
            "id": "missing",
            "type": "service",
            "needs": ["flaky"],
            "retry": {"max_attempts": 3, "initial_seconds": 0.2},
            "call": {"service": "logistics", "method": "GET", "path": "/inventory/2147483000"},
        },
        {"id": "never", "type": "set", "needs": ["missing"], "value": 1},
    )
    run = wait_run(api, start(api, name)["id"])
    s = steps(run)
    assert (
        s["flaky"]["status"] == "failed"
        and s["flaky"]["attempts"] == 3
        and "unreachable" in s["flaky"]["error"]
    )
    assert (
        s["missing"]["status"] == "failed" and s["missing"]["attempts"] == 1
    )  # a 404 is not retried
    assert "404" in s["missing"]["error"] and s["never"]["status"] == "pending"
    assert run["status"] == "failed" and "missing" in run["error"]
    events = history(api, run["id"])
    retries = [e for e in events if e["kind"] == "step_retry_scheduled"]
    assert len(retries) == 2
    gaps = [e["detail"]["retry_at"] for e in retries]
    assert gaps[0] < gaps[1]


def test_step_timeout(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("timeout")
    define(
        api,
        name,
        {
            "id": "poll",
            "type": "service",
            "timeout_seconds": 0.5,
            "poll_seconds": 0.1,
            "until": "False",
            "call": {"service": "logistics", "method": "GET", "path": "/inventory"},
        },
    )
    run = wait_run(api, start(api, name)["id"])
    assert run["status"] == "failed" and "timed out after 0.5 s" in steps(run)["poll"]["error"]


def test_saga_compensation_releases_the_reservation(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    api = agents.client("editor")
    item = make_item(logistics, quantity=10)
    name = unique("saga")
    define(
        api,
        name,
        {
            "id": "shipment",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/shipments",
                "body": {
                    "reference": "{{ input.ref }}",
                    "destination": "1 Main St",
                    "lines": [{"sku": "{{ input.sku }}", "quantity": 4}],
                },
            },
            "compensate": {
                "service": "logistics",
                "method": "POST",
                "path": "/shipments/{{ output.id }}/transitions",
                "body": {"status": "cancelled", "note": "run {{ run.id }}"},
            },
        },
        {
            "id": "reserve_more",
            "type": "service",
            "needs": ["shipment"],
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory/{{ input.item_id }}/movements",
                "body": {"type": "reservation", "quantity": 2, "reference": "{{ input.ref }}-2"},
            },
            "compensate": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory/{{ input.item_id }}/movements",
                "body": {"type": "release", "quantity": 2, "reference": "{{ input.ref }}-2"},
            },
        },
        {
            "id": "charge",
            "type": "service",
            "needs": ["reserve_more"],
            "on_error": "compensate",
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory/{{ input.item_id }}/movements",
                "body": {"type": "reservation", "quantity": 1000, "reference": "too-much"},
            },
        },
    )
    run = wait_run(
        api, start(api, name, sku=item["sku"], item_id=item["id"], ref=unique("SO"))["id"]
    )
    assert run["status"] == "compensated", run
    s = steps(run)
    assert s["charge"]["status"] == "failed" and "409" in s["charge"]["error"]
    assert s["shipment"]["status"] == "compensated" and s["reserve_more"]["status"] == "compensated"
    # Compensations ran in reverse order of completion.
    kinds = [(e["kind"], e["step_id"]) for e in history(api, run["id"])]
    compensated = [step for kind, step in kinds if kind == "step_compensated"]
    assert compensated == ["reserve_more", "shipment"]
    shipment = logistics.client().get(f"/shipments/{s['shipment']['output']['id']}").json()
    assert shipment["status"] == "cancelled"
    after = logistics.client().get(f"/inventory/{item['id']}").json()
    assert after["reserved"] == 0 and after["quantity"] == 10
    wf = next(w for w in api.get("/stats").json()["workflows"] if w["workflow"] == name)
    assert wf["compensated"] == 1 and wf["success_rate"] == 0.0


def test_agent_step_waits_for_an_external_agent(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("review").replace("-", "_")
    name = unique("agentwf")
    define(
        api,
        name,
        {
            "id": "review",
            "type": "agent",
            "capability": cap,
            "priority": 10,
            "payload": {"doc": "{{ input.doc }}"},
        },
        {
            "id": "verdict",
            "type": "condition",
            "needs": ["review"],
            "expression": "steps.review.output.approved",
        },
    )
    # Registered first: a step whose capability no agent has fails at once (unless it
    # sets wait_for_agent), and the engine may reach the step before a later POST lands.
    agent = api.post(
        "/agents", json={"name": unique("reviewer"), "kind": "external", "capabilities": [cap]}
    ).json()
    run = start(api, name, doc="contract.pdf")
    leased = wait_for(
        lambda: api.post(f"/agents/{agent['id']}/claim", json={}).json(), lambda x: len(x) == 1, 10
    )[0]
    assert leased["payload"] == {"doc": "contract.pdf"} and leased["workflow_run_id"] == run["id"]
    assert leased["step_id"] == "review" and leased["priority"] == 10
    assert api.get(f"/runs/{run['id']}").json()["status"] == "running"
    api.post(
        f"/tasks/{leased['id']}/complete",
        json={"lease_token": leased["lease_token"], "result": {"approved": True}},
    )
    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded" and steps(done)["verdict"]["output"] is True
    assert steps(done)["review"]["task_id"] == leased["id"]


def test_cancel_a_run_cancels_its_tasks(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("cancel")
    capability = unique("nobody").replace("-", "_")
    define(
        api, name, {"id": "work", "type": "agent", "capability": capability, "wait_for_agent": True}
    )
    run = start(api, name)
    task_id = wait_for(
        lambda: steps(api.get(f"/runs/{run['id']}").json())["work"]["task_id"], bool, 10
    )
    cancelled = api.post(f"/runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert api.get(f"/tasks/{task_id}").json()["status"] == "cancelled"
    assert_problem(api.post(f"/runs/{run['id']}/cancel"), 409, kind="illegal-transition")


def test_restart_mid_run_resumes_without_repeating_completed_steps(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    api = agents.client("editor")
    sku = unique("RESTART").upper()
    name = unique("durable")
    define(
        api,
        name,
        # Not idempotent: a second POST of the same SKU is a 409, which would fail the run.
        {
            "id": "create",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory",
                "body": {
                    "sku": "{{ input.sku }}",
                    "name": "Durable",
                    "quantity": 5,
                    "unit_cost": "1.00",
                },
            },
        },
        {"id": "pause", "type": "wait", "seconds": 3, "needs": ["create"]},
        {
            "id": "receive",
            "type": "service",
            "needs": ["pause"],
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory/{{ steps.create.output.id }}/movements",
                "body": {"type": "receipt", "quantity": 7, "reference": "restock"},
            },
        },
    )
    run = start(api, name, sku=sku)
    wait_for(
        lambda: steps(api.get(f"/runs/{run['id']}").json())["pause"]["status"],
        lambda s: s == "running",
        10,
    )
    agents.restart()
    api = agents.client("editor")
    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded", done
    s = steps(done)
    assert (
        s["create"]["attempts"] == 1
        and s["pause"]["attempts"] == 1
        and s["receive"]["attempts"] == 1
    )
    started = [e["step_id"] for e in history(api, run["id"]) if e["kind"] == "step_started"]
    assert started == ["create", "pause", "receive"]
    item = logistics.client().get(f"/inventory/sku/{sku}").json()
    assert item["quantity"] == 12


def test_restart_while_an_agent_step_waits_for_its_task(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    cap = unique("slowjob").replace("-", "_")
    name = unique("durable_agent")
    define(
        api,
        name,
        {"id": "job", "type": "agent", "capability": cap, "payload": {"n": "{{ input.n }}"}},
        {"id": "double", "type": "set", "needs": ["job"], "value": "{{ steps.job.output.n * 2 }}"},
    )
    agent = api.post(  # before the run: see test_agent_step_waits_for_an_external_agent
        "/agents", json={"name": unique("worker"), "kind": "external", "capabilities": [cap]}
    ).json()
    run = start(api, name, n=21)
    leased = wait_for(
        lambda: api.post(f"/agents/{agent['id']}/claim", json={"lease_seconds": 60}).json(),
        lambda x: len(x) == 1,
        10,
    )[0]
    agents.restart()
    api = agents.client("editor")
    # The lease and the run both survive the restart; the task is not submitted twice.
    beat = api.post(f"/tasks/{leased['id']}/heartbeat", json={"lease_token": leased["lease_token"]})
    assert beat.status_code == 200, beat.text
    api.post(
        f"/tasks/{leased['id']}/complete",
        json={"lease_token": leased["lease_token"], "result": {"n": 21}},
    )
    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded" and steps(done)["double"]["output"] == 42
    assert api.get("/tasks", params={"workflow_run_id": run["id"]}).json()["total"] == 1


def test_many_runs_at_once_all_finish(agents: ServiceProcess, logistics: ServiceProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    item = make_item(logistics)
    api = agents.client("editor")
    name = unique("burst")
    define(
        api,
        name,
        {
            "id": "read",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "GET",
                "path": "/inventory/{{ input.item }}",
            },
        },
        {
            "id": "a",
            "type": "set",
            "needs": ["read"],
            "value": "{{ steps.read.output.quantity + input.k }}",
        },
        {"id": "b", "type": "set", "needs": ["read"], "value": "{{ input.k }}"},
        {
            "id": "c",
            "type": "set",
            "needs": ["a", "b"],
            "value": "{{ steps.a.output - steps.b.output }}",
        },
    )
    with ThreadPoolExecutor(8) as pool:
        started = list(
            pool.map(
                lambda k: start(agents.client("editor"), name, item=item["id"], k=k), range(30)
            )
        )
    finished = [wait_run(api, r["id"], 60) for r in started]
    assert all(r["status"] == "succeeded" for r in finished), [r["error"] for r in finished]
    assert {steps(r)["c"]["output"] for r in finished} == {10}
    assert agents.client().get("/stats").json()  # figures still answer under the burst


def test_on_conflict_adopts_what_an_earlier_attempt_created(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    """Create-or-get: a step repeated after a restart finds the shipment its first attempt made."""
    item = make_item(logistics)
    ref = unique("SO")
    body = {
        "reference": ref,
        "destination": "1 Main St",
        "lines": [{"sku": item["sku"], "quantity": 1}],
    }
    existing = logistics.client().post("/shipments", json=body).json()
    api = agents.client("editor")
    call = {"service": "logistics", "method": "POST", "path": "/shipments", "body": body}
    lookup = {
        "call": {
            "service": "logistics",
            "method": "GET",
            "path": "/shipments",
            "params": {"reference": "{{ input.ref }}"},
        },
        "output": "{{ response['items'][0] if response['total'] else None }}",
    }
    name = unique("createorget")
    define(api, name, {"id": "shipment", "type": "service", "call": call, "on_conflict": lookup})
    run = wait_run(api, start(api, name, ref=ref)["id"])
    assert run["status"] == "succeeded", run
    assert steps(run)["shipment"]["output"]["id"] == existing["id"]
    assert logistics.client().get("/shipments", params={"reference": ref}).json()["total"] == 1
    assert logistics.client().get(f"/inventory/{item['id']}").json()["reserved"] == 1

    plain = unique("plain")
    define(api, plain, {"id": "shipment", "type": "service", "call": call})
    failed = wait_run(api, start(api, plain)["id"])
    assert failed["status"] == "failed" and "409" in steps(failed)["shipment"]["error"]


def test_a_slow_branch_does_not_hold_back_another(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("branches")
    define(
        api,
        name,
        # Polls for 2 s, then gives up (and the run goes on).
        {
            "id": "slow",
            "type": "service",
            "timeout_seconds": 2,
            "poll_seconds": 0.2,
            "until": "False",
            "on_error": "continue",
            "call": {"service": "logistics", "method": "GET", "path": "/inventory"},
        },
        {"id": "quick", "type": "wait", "seconds": 0.2},
        {"id": "after_quick", "type": "set", "needs": ["quick"], "value": 1},
        {"id": "end", "type": "set", "needs": ["slow", "after_quick"], "value": 2},
    )
    run = wait_run(api, start(api, name)["id"])
    assert run["status"] == "succeeded", run
    s = steps(run)
    assert s["slow"]["status"] == "failed" and s["end"]["status"] == "succeeded"
    assert s["after_quick"]["finished_at"] < s["slow"]["finished_at"]


def test_on_conflict_adopts_only_what_already_exists(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    """A stock shortage is a 409 too, but nothing to adopt: the step fails with
    Logistics' own problem, not "on_conflict found nothing" (issue 19)."""
    item = make_item(logistics, quantity=1)
    api = agents.client("editor")
    call = {
        "service": "logistics",
        "method": "POST",
        "path": f"/inventory/{item['id']}/movements",
        "body": {"type": "reservation", "quantity": 5, "reference": "{{ input.ref }}"},
    }
    lookup = {
        "call": {
            "service": "logistics",
            "method": "GET",
            "path": f"/inventory/{item['id']}/movements",
        },
        "output": "{{ response['items'][0] if response['total'] else None }}",
    }
    name = unique("shortage")
    define(api, name, {"id": "reserve", "type": "service", "call": call, "on_conflict": lookup})
    run = wait_run(api, start(api, name, ref=unique("SO"))["id"])
    assert run["status"] == "failed", run
    error = steps(run)["reserve"]["error"]
    assert "409" in error and "on_conflict" not in error, error
    assert "available" in error.lower() or "enough" in error.lower(), error


def test_an_agent_step_no_agent_can_take_fails_at_once(agents: ServiceProcess) -> None:
    """Nobody has the capability: the step fails now with the reason, unless it asks to
    wait for an agent (issue 19)."""
    api = agents.client("editor")
    capability = unique("nobody").lower()
    name = unique("orphan")
    define(api, name, {"id": "ask", "type": "agent", "capability": capability, "payload": {"q": 1}})
    run = wait_run(api, start(api, name)["id"], timeout=20)
    assert run["status"] == "failed", run
    error = steps(run)["ask"]["error"]
    assert capability in error and "wait_for_agent" in error, error
    assert steps(run)["ask"]["attempts"] <= 1

    patient = unique("patient")
    define(
        api,
        patient,
        {
            "id": "ask",
            "type": "agent",
            "capability": capability,
            "payload": {"q": 1},
            "wait_for_agent": True,
        },
    )
    waiting = start(api, patient)
    time.sleep(1.5)
    assert api.get(f"/runs/{waiting['id']}").json()["status"] == "running"
    assert api.post(f"/runs/{waiting['id']}/cancel").status_code in (200, 202)
