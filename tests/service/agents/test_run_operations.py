"""Signals into waiting runs, and operations on failed runs (retry, compensate, terminate),
over real HTTP against a real Logistics service, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from tests.service.agents.helpers import define, history, start, steps, unique, wait_for, wait_run
from tests.service.agents.test_workflows import make_item
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def _step_status(api: httpx.Client, run_id: int, step_id: str) -> str:
    run = api.get(f"/runs/{run_id}").json()
    return steps(run).get(step_id, {}).get("status", "pending")


def test_a_signal_wakes_the_waiting_step_with_its_payload(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("approval")
    define(
        api,
        name,
        {"id": "approval", "type": "wait", "signal": "approved", "seconds": 300},
        {
            "id": "after",
            "type": "set",
            "needs": ["approval"],
            "value": "{{ steps.approval.output.by }}",
        },
    )
    run = start(api, name)
    wait_for(lambda: _step_status(api, run["id"], "approval"), lambda s: s == "running")
    # Another signal's name does not wake it.
    other = api.post(f"/runs/{run['id']}/signals/rejected", json={"payload": {"by": "x"}})
    assert other.status_code == 202, other.text
    sent = api.post(f"/runs/{run['id']}/signals/approved", json={"payload": {"by": "ops"}})
    assert sent.status_code == 202, sent.text
    assert sent.json()["name"] == "approved" and sent.json()["sent_by"]

    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded", done
    assert steps(done)["approval"]["output"] == {"by": "ops"}
    assert steps(done)["after"]["output"] == "ops"
    kinds = [e["kind"] for e in history(api, run["id"])]
    assert kinds.count("signal_received") == 2

    late = api.post(f"/runs/{run['id']}/signals/approved", json={"payload": None})
    assert_problem(late, 409, kind="conflict")
    assert "finished" in late.json()["detail"]


def test_a_signal_sent_early_is_kept_and_a_missing_one_times_out(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    name = unique("early")
    define(
        api,
        name,
        {"id": "pause", "type": "wait", "seconds": 1},
        {"id": "go", "type": "wait", "needs": ["pause"], "signal": "go"},
    )
    run = start(api, name)
    assert api.post(f"/runs/{run['id']}/signals/go", json={"payload": 7}).status_code == 202
    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded" and steps(done)["go"]["output"] == 7

    name = unique("timeout")
    define(api, name, {"id": "go", "type": "wait", "signal": "go", "seconds": 1})
    failed = wait_run(api, start(api, name)["id"])
    assert failed["status"] == "failed"
    assert "no signal 'go' within 1 s" in steps(failed)["go"]["error"]


def test_signal_and_definition_input_are_checked(agents: ServiceProcess) -> None:
    api = agents.client("editor")
    bad = api.post(
        "/workflows",
        json={
            "name": unique("bad"),
            "steps": [{"id": "a", "type": "set", "value": 1, "signal": "x"}],
        },
    )
    assert_problem(bad, 422)
    assert "only wait steps" in bad.text
    bad = api.post(
        "/workflows", json={"name": unique("bad"), "steps": [{"id": "a", "type": "wait"}]}
    )
    assert_problem(bad, 422)
    assert "`seconds`, `signal`" in bad.text
    assert api.post("/runs/999999/signals/go", json={}).status_code == 404
    name = unique("sig")
    define(api, name, {"id": "a", "type": "wait", "signal": "go", "seconds": 60})
    run = start(api, name)
    assert_problem(api.post(f"/runs/{run['id']}/signals/Not%20A%20Name", json={}), 422)
    assert_problem(api.post(f"/runs/{run['id']}/signals/go", json={"extra": 1}), 422)
    # Viewers read; only editors send signals.
    assert agents.client("viewer").post(f"/runs/{run['id']}/signals/go", json={}).status_code == 403
    assert api.post(f"/runs/{run['id']}/cancel").json()["status"] == "cancelled"
    assert_problem(api.post(f"/runs/{run['id']}/retry"), 409, kind="illegal-transition")


def test_retry_runs_a_failed_run_again_from_its_failed_step(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    api = agents.client("editor")
    item = make_item(logistics, quantity=3)
    name = unique("retry")
    define(
        api,
        name,
        {"id": "first", "type": "set", "value": "{{ input.ref }}"},
        {
            "id": "reserve",
            "type": "service",
            "needs": ["first"],
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": "/inventory/{{ input.item_id }}/movements",
                "body": {"type": "reservation", "quantity": 5, "reference": "{{ input.ref }}"},
            },
        },
    )
    run = wait_run(api, start(api, name, item_id=item["id"], ref=unique("R"))["id"])
    assert run["status"] == "failed" and steps(run)["reserve"]["status"] == "failed", run
    first_done = steps(run)["first"]["finished_at"]

    # Stock arrives; the run goes on from the failed step.
    r = logistics.client().post(
        f"/inventory/{item['id']}/movements", json={"type": "receipt", "quantity": 5}
    )
    assert r.status_code == 201, r.text
    retried = api.post(f"/runs/{run['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "running"
    done = wait_run(api, run["id"])
    assert done["status"] == "succeeded", done
    assert steps(done)["first"]["finished_at"] == first_done  # not run again
    assert steps(done)["reserve"]["status"] == "succeeded"
    kinds = [(e["kind"], e["step_id"]) for e in history(api, run["id"])]
    assert ("run_retried", None) in kinds
    assert [k for k in kinds if k == ("step_started", "first")] == [("step_started", "first")]
    assert logistics.client().get(f"/inventory/{item['id']}").json()["reserved"] == 5
    # Only a failed run is retried.
    assert_problem(api.post(f"/runs/{run['id']}/retry"), 409, kind="illegal-transition")


def test_compensate_undoes_a_run_that_failed_with_on_error_fail(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    api = agents.client("editor")
    item = make_item(logistics, quantity=10)
    name = unique("undo")
    movement = "/inventory/{{ input.item_id }}/movements"
    define(
        api,
        name,
        {
            "id": "reserve",
            "type": "service",
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": movement,
                "body": {"type": "reservation", "quantity": 4, "reference": "{{ input.ref }}"},
            },
            "compensate": {
                "service": "logistics",
                "method": "POST",
                "path": movement,
                "body": {"type": "release", "quantity": 4, "reference": "{{ input.ref }}"},
            },
        },
        {
            "id": "too_much",
            "type": "service",
            "needs": ["reserve"],
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": movement,
                "body": {"type": "reservation", "quantity": 1000, "reference": "x"},
            },
        },
    )
    run = wait_run(api, start(api, name, item_id=item["id"], ref=unique("C"))["id"])
    assert run["status"] == "failed", run
    assert logistics.client().get(f"/inventory/{item['id']}").json()["reserved"] == 4

    answer = api.post(f"/runs/{run['id']}/compensate")
    assert answer.status_code == 200, answer.text
    done = wait_run(api, run["id"])
    assert done["status"] == "compensated", done
    assert steps(done)["reserve"]["status"] == "compensated"
    assert logistics.client().get(f"/inventory/{item['id']}").json()["reserved"] == 0
    kinds = [e["kind"] for e in history(api, run["id"])]
    assert kinds.index("run_compensation_requested") < kinds.index("step_compensated")
    assert_problem(api.post(f"/runs/{run['id']}/compensate"), 409, kind="illegal-transition")


def test_an_agent_step_is_compensated_with_its_own_result(
    agents: ServiceProcess, logistics: ServiceProcess
) -> None:
    """An external agent reserves stock and returns the reference; when a later step fails with
    on_error: compensate, the agent step's compensation releases what its result names."""
    api = agents.client("editor")
    item = make_item(logistics, quantity=10)
    cap = unique("booker").replace("-", "_")
    movement = "/inventory/{{ input.item_id }}/movements"
    name = unique("agentsaga")
    define(
        api,
        name,
        {
            "id": "book",
            "type": "agent",
            "capability": cap,
            "payload": {"item_id": "{{ input.item_id }}"},
            "compensate": {
                "service": "logistics",
                "method": "POST",
                "path": movement,
                "body": {
                    "type": "release",
                    "quantity": "{{ output.quantity }}",
                    "reference": "{{ output.reference }}",
                },
            },
        },
        {
            "id": "too_much",
            "type": "service",
            "needs": ["book"],
            "on_error": "compensate",
            "call": {
                "service": "logistics",
                "method": "POST",
                "path": movement,
                "body": {"type": "reservation", "quantity": 1000, "reference": "x"},
            },
        },
    )
    agent = api.post(
        "/agents", json={"name": unique("booker"), "kind": "external", "capabilities": [cap]}
    ).json()
    run = start(api, name, item_id=item["id"])
    leased = wait_for(
        lambda: api.post(f"/agents/{agent['id']}/claim", json={}).json(), lambda x: len(x) == 1, 10
    )[0]
    # The agent does its work (a reservation) and reports what it booked.
    ref = unique("BOOK")
    r = logistics.client().post(
        f"/inventory/{item['id']}/movements",
        json={"type": "reservation", "quantity": 3, "reference": ref},
    )
    assert r.status_code == 201, r.text
    done = api.post(
        f"/tasks/{leased['id']}/complete",
        json={"lease_token": leased["lease_token"], "result": {"reference": ref, "quantity": 3}},
    )
    assert done.status_code == 200, done.text
    final = wait_run(api, run["id"])
    assert final["status"] == "compensated", final
    assert steps(final)["book"]["status"] == "compensated"
    assert logistics.client().get(f"/inventory/{item['id']}").json()["reserved"] == 0
