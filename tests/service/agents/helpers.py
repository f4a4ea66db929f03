"""Waiting for runs and tasks, shared by the agent orchestration tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

FINAL_RUN = {"succeeded", "failed", "compensated", "cancelled"}
FINAL_TASK = {"succeeded", "failed", "cancelled"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(fetch: Any, done: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value: {value}")
        time.sleep(interval)


def wait_run(api: httpx.Client, run_id: int, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(
        lambda: api.get(f"/runs/{run_id}").json(), lambda r: r["status"] in FINAL_RUN, timeout
    )


def wait_task(api: httpx.Client, task_id: int, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(
        lambda: api.get(f"/tasks/{task_id}").json(), lambda t: t["status"] in FINAL_TASK, timeout
    )


def steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step_id"]: s for s in run["steps"]}


def define(api: httpx.Client, name: str, *steps_: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/workflows", json={"name": name, "steps": list(steps_)})
    assert r.status_code == 201, r.text
    return r.json()


def start(api: httpx.Client, workflow: str, **input_: Any) -> dict[str, Any]:
    r = api.post("/runs", json={"workflow": workflow, "input": input_})
    assert r.status_code == 201, r.text
    return r.json()


def history(api: httpx.Client, run_id: int) -> list[dict[str, Any]]:
    return api.get(f"/runs/{run_id}/history", params={"limit": 500}).json()["items"]
