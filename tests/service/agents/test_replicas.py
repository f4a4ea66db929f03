"""Several agent-orchestration replicas on one PostgreSQL database.

Each replica is its own OS process with its own engine loop; they share runs by
run leases and tasks by task leases. Every step and task calls a recording
upstream (tests.support.recorder) through a path prefix naming the replica, so a
side effect made twice, or by two replicas, shows.

Schedules (added separately) fit the same harness: ``replicas_of(3)``, then a
schedule (a short interval) of a workflow whose one step is
``effect("fire", "{{ input.tick }}")`` (the scheduled time, or whatever names the
tick); after a few ticks, each tick's reference must have been POSTed to
``/effects`` exactly once (``Recorder.calls_to("POST", "/effects", ref)``) and
the runs per tick counted with ``GET /runs?workflow=``: one. SIGKILL the replica
that fired the latest tick (the ``replica`` of its call) and the next ticks must
still fire once each, from the survivors.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.agents.helpers import (
    define,
    history,
    steps,
    unique,
    wait_for,
    wait_run,
    wait_task,
)
from tests.support.postgres import PostgresServer
from tests.support.recorder import Recorder
from tests.support.servers import ServiceProcess, service_process

pytestmark = pytest.mark.postgres

# Short leases so a dead replica's runs move on within seconds.
LEASE_SECONDS = 2
REPLICA_ENV = {
    "BHIV_AGENTS_POLL_INTERVAL_SECONDS": "0.1",
    "BHIV_AGENTS_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


def start_replicas(
    count: int, postgres: PostgresServer, recorder: Recorder, tmp_path: Path
) -> list[ServiceProcess]:
    database = postgres.create_database()
    replicas = []
    for i in range(1, count + 1):
        urls = {"integrations": recorder.url_for(f"r{i}")}
        (tmp_path / f"r{i}").mkdir()
        replicas.append(
            service_process(
                "agent-orchestration",
                tmp_path / f"r{i}",
                database,
                BHIV_AGENTS_SERVICE_URLS=json.dumps(urls),
                **REPLICA_ENV,
            )
        )
    # The first creates the schema; the others start together.
    replicas[0].start()
    for r in replicas[1:]:
        r.launch()
    for r in replicas[1:]:
        r.wait_ready()
    return replicas


@pytest.fixture
def replicas_of(postgres: PostgresServer, recorder: Recorder, tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def make(count: int) -> list[ServiceProcess]:
        started.extend(start_replicas(count, postgres, recorder, tmp_path))
        return started

    yield make
    for r in started:
        r.stop()
    for r in started:
        if r.process is not None and r.process.returncode == -9:
            continue  # killed on purpose: its log ends mid-run
        errors = [line for line in r.log().splitlines() if '"level": "ERROR"' in line]
        assert not errors, f"{r.log_path.parent.name} logged errors:\n" + "\n".join(errors[:5])


def effect(step_id: str, reference: str, delay: float | str = 0, **extra: Any) -> dict[str, Any]:
    """A service step creating an effect, create-or-get (a repeat adopts the first);
    its answer comes ``delay`` seconds after the effect is made."""
    return {
        "id": step_id,
        "type": "service",
        "call": {
            "service": "integrations",
            "method": "POST",
            "path": "/effects",
            "body": {"reference": reference, "delay": delay},
        },
        "on_conflict": {
            "call": {
                "service": "integrations",
                "method": "GET",
                "path": "/effects",
                "params": {"reference": reference},
            },
            "output": "{{ response['items'][0] if response['total'] else None }}",
        },
        **extra,
    }


def worker(capability: str) -> dict[str, Any]:
    """A service agent whose tasks POST their payload to the recorder's /work."""
    return {
        "name": unique("worker"),
        "kind": "service",
        "capabilities": [capability],
        "max_concurrency": 50,
        "service": "integrations",
        "path": "/work",
    }


def define_fanout(api: httpx.Client) -> str:
    """a, then b and c side by side, then d: three side effects a run. b outlasts
    the run lease, so every run is held across several renewals, and most of the
    200 are in flight at once."""
    name = unique("replicated")
    define(
        api,
        name,
        effect("a", "{{ run.id }}-a"),
        effect("b", "{{ run.id }}-b", LEASE_SECONDS * 4, needs=["a"]),
        effect("c", "{{ run.id }}-c", needs=["a"]),
        {"id": "d", "type": "set", "needs": ["b", "c"], "value": "{{ steps.b.output['id'] }}"},
    )
    return name


def count(api: httpx.Client, path: str, **params: Any) -> int:
    r = api.get(path, params={**params, "limit": 1})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def wait_runs_final(api: httpx.Client, workflow: str, timeout: float) -> None:
    wait_for(
        lambda: (
            count(api, "/runs", workflow=workflow, status="running")
            + count(api, "/runs", workflow=workflow, status="compensating")
        ),
        lambda n: n == 0,
        timeout,
        interval=0.5,
    )


@pytest.mark.parametrize("replica_count", [2, 3])
def test_replicas_share_runs_and_tasks_without_doing_any_twice(
    replica_count: int, replicas_of: Any, recorder: Recorder
) -> None:
    replicas = replicas_of(replica_count)
    apis = [r.client("admin") for r in replicas]
    workflow = define_fanout(apis[0])
    r = apis[0].post("/agents", json=worker("record"))
    assert r.status_code == 201, r.text

    # 200 runs and 500 tasks, submitted round-robin to every replica, all at once.
    def submit(i: int) -> tuple[int | None, int]:
        api = apis[i % replica_count]
        run_id = None
        if i < 200:
            r = api.post("/runs", json={"workflow": workflow, "input": {}})
            assert r.status_code == 201, r.text
            run_id = r.json()["id"]
        r = api.post("/tasks", json={"capability": "record", "payload": {"reference": f"t{i}"}})
        assert r.status_code == 201, r.text
        return run_id, r.json()["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit, range(500)))
    run_ids = [run_id for run_id, _ in submitted if run_id is not None]

    api = apis[0]
    wait_runs_final(api, workflow, timeout=120)
    wait_for(
        lambda: (
            count(api, "/tasks", capability="record", status="queued")
            + count(api, "/tasks", capability="record", status="running")
        ),
        lambda n: n == 0,
        timeout=60,
        interval=0.5,
    )
    elapsed = time.monotonic() - started

    # Every run succeeded; every step started once (one attempt, no takeover).
    assert count(api, "/runs", workflow=workflow, status="succeeded") == 200
    for run_id in run_ids:
        started_steps = Counter(
            e["step_id"] for e in history(api, run_id) if e["kind"] == "step_started"
        )
        assert started_steps == {"a": 1, "b": 1, "c": 1, "d": 1}, (run_id, started_steps)

    # Every side effect was made exactly once, by exactly one replica.
    posts = recorder.calls_to("POST", "/effects")
    by_reference: dict[str | None, list[str]] = defaultdict(list)
    for call in posts:
        by_reference[call.reference].append(call.replica)
    expected = {f"{run_id}-{s}" for run_id in run_ids for s in "abc"}
    assert set(by_reference) == expected
    twice = {ref: who for ref, who in by_reference.items() if len(who) != 1}
    assert not twice, f"effects made more than once: {dict(list(twice.items())[:5])}"
    assert recorder.calls_to("GET", "/effects") == []  # no repeat needed adopting

    # Every task succeeded on its first attempt, and its call was made once.
    assert count(api, "/tasks", capability="record", status="succeeded") == 500
    work = Counter(c.reference for c in recorder.calls_to("POST", "/work"))
    assert set(work) == {f"t{i}" for i in range(500)}
    assert set(work.values()) == {1}, [ref for ref, n in work.items() if n > 1][:5]

    # The replicas really shared the work.
    runs_by = Counter(c.replica for c in posts)
    tasks_by = Counter(c.replica for c in recorder.calls_to("POST", "/work"))
    assert len(runs_by) >= 2, runs_by
    assert len(tasks_by) >= 2, tasks_by
    print(f"{replica_count} replicas: {elapsed:.1f} s; steps {runs_by}; tasks {tasks_by}")


def test_a_replica_killed_mid_step_is_taken_over_after_its_lease(
    replicas_of: Any, recorder: Recorder
) -> None:
    replicas = replicas_of(3)
    apis = [r.client("editor") for r in replicas]
    name = unique("takeover")
    define(
        apis[0],
        name,
        effect("slow", "{{ input.ref }}", "{{ input.delay }}"),
        effect("after", "{{ input.ref }}-after", needs=["slow"]),
    )
    # 30 tasks whose calls are held open, running on every replica when one dies.
    r = apis[0].post("/agents", json=worker("slow"))
    assert r.status_code == 201, r.text
    tasks = []
    for i in range(30):
        payload = {"reference": f"k{i}"}
        recorder.hold(payload["reference"])
        r = apis[i % 3].post(
            "/tasks", json={"capability": "slow", "payload": payload, "max_attempts": 2}
        )
        assert r.status_code == 201, r.text
        tasks.append(r.json())

    held = unique("held")
    recorder.hold(held)
    body = {"workflow": name, "input": {"ref": held, "delay": 0}}
    victim_run = apis[0].post("/runs", json=body).json()

    # 200 other runs in flight on every replica while one dies, each in a step that
    # outlasts several leases: the survivors take over the victim's runs while
    # renewing their own.
    def submit(i: int) -> dict[str, Any]:
        body = {"workflow": name, "input": {"ref": unique("o"), "delay": LEASE_SECONDS * 4}}
        r = apis[i % 3].post("/runs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    with ThreadPoolExecutor(8) as pool:
        others = list(pool.map(submit, range(200)))

    first = wait_for(
        lambda: recorder.calls_to("POST", "/effects", held), lambda calls: len(calls) == 1
    )[0]
    refs = {o["input"]["ref"] for o in others}
    wait_for(
        lambda: len({c.reference for c in recorder.calls_to("POST", "/effects")} & refs),
        lambda n: n >= 150,
    )
    victim_name = first.replica
    victim = replicas[int(victim_name[1:]) - 1]
    survivor = apis[(replicas.index(victim) + 1) % 3]
    assert victim.process is not None
    victim.process.kill()  # SIGKILL: no lease released, the step's answer never read
    victim.process.wait()
    killed_at = time.monotonic()
    recorder.release(held)
    for task in tasks:
        recorder.release(task["payload"]["reference"])

    run = wait_run(survivor, victim_run["id"])
    assert run["status"] == "succeeded", run
    slow = steps(run)["slow"]
    # At least once: the step ran again, once, on another replica, and adopted the
    # effect the first attempt made instead of making a second one.
    assert slow["attempts"] == 2, slow
    assert slow["output"] == recorder.effects[held]
    posts = recorder.calls_to("POST", "/effects", held)
    assert [c.replica == victim_name for c in posts] == [True, False], posts
    lookups = recorder.calls_to("GET", "/effects", held)
    assert [c.replica for c in lookups] == [posts[1].replica]
    # Taken over only once the lease lapsed: the victim renewed it at most a third of a
    # lease before it died.
    assert posts[1].at - killed_at > LEASE_SECONDS * 2 / 3 - 0.1, posts[1].at - killed_at
    assert posts[1].at - killed_at < LEASE_SECONDS + 10, posts[1].at - killed_at

    # Every other run finished too, the victim's among them; none of their effects was
    # made twice, except a step the victim had in flight, run again once elsewhere.
    for other in others:
        done = wait_run(survivor, other["id"])
        assert done["status"] == "succeeded", done
    repeated = {}
    victims = 0
    for ref in refs:
        for reference in (ref, f"{ref}-after"):
            made = [c.replica for c in recorder.calls_to("POST", "/effects", reference)]
            victims += made[0] == victim_name
            if not (len(made) == 1 or len(made) == 2 and made[0] == victim_name != made[1]):
                repeated[reference] = made
    assert not repeated, f"{len(repeated)} steps ran twice, not after the kill: {repeated}"
    assert victims >= 10, victims  # the victim held its share of the runs

    # The victim's tasks were requeued when their leases lapsed and done elsewhere; no
    # other task was done twice.
    victims = 0
    for task in tasks:
        done = wait_task(survivor, task["id"])
        assert done["status"] == "succeeded", done
        made = [c.replica for c in recorder.calls_to("POST", "/work", task["payload"]["reference"])]
        if made[0] == victim_name:
            victims += 1
            assert len(made) == 2 and made[1] != victim_name and done["attempts"] == 2, (made, done)
        else:
            assert len(made) == 1 and done["attempts"] == 1, (made, done)
    assert victims >= 1
