"""BHIV Core installed by its Helm chart on a real cluster and used through the Ingress
as a client would, from `helm install` to `helm uninstall`. The tests run in file
order and share one release: later ones (delete, upgrade, uninstall) change it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from bhiv import catalog

from tests.e2e.conftest import CHART, RELEASE, E2ECluster
from tests.support.realnode import eventually

MODULES = set(catalog.SERVICES)
SERVICES = MODULES - {"gateway"}


@pytest.fixture(scope="module")
def client(e2e: E2ECluster) -> httpx.Client:
    """A client of the Ingress with a token from POST /auth/token (the API key's admin role)."""
    r = httpx.post(f"{e2e.ingress_url}/auth/token", headers={"X-API-Key": e2e.api_key}, timeout=15)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["roles"] == ["admin"]  # noqa: S105 - not a secret
    return httpx.Client(
        base_url=e2e.ingress_url,
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=15,
    )


@dataclass
class Record:
    """Something created in one service, read back at ``path`` (through the gateway)."""

    service: str
    path: str
    expect: dict[str, Any]


def _create(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 201, f"POST {path}: {r.status_code} {r.text[:500]}"
    return r.json()


@pytest.fixture(scope="module")
def records(client: httpx.Client) -> list[Record]:
    """One record in every service, each with its own database."""
    tag = uuid.uuid4().hex[:8]
    item = _create(
        client,
        "/api/logistics/inventory",
        {
            "sku": f"E2E-{tag.upper()}",
            "name": "e2e widget",
            "quantity": 12,
            "reorder_level": 2,
            "unit_cost": "1.25",
        },
    )
    customer = _create(
        client, "/api/crm/customers", {"name": f"E2E {tag}", "email": f"e2e-{tag}@example.com"}
    )
    source = _create(client, "/api/integrations/webhook-sources", {"name": f"e2e-{tag}"})
    conversation = _create(client, "/api/llm/conversations", {"title": f"e2e {tag}"})
    agent = _create(
        client,
        "/api/agents/agents",
        {"name": f"e2e-{tag}", "kind": "external", "capabilities": ["e2e"]},
    )
    return [
        Record(
            "logistics",
            f"/api/logistics/inventory/{item['id']}",
            {"sku": item["sku"], "quantity": 12},
        ),
        Record("crm", f"/api/crm/customers/{customer['id']}", {"email": customer["email"]}),
        Record(
            "integrations",
            f"/api/integrations/webhook-sources/{source['id']}",
            {"name": source["name"]},
        ),
        Record(
            "llm-query", f"/api/llm/conversations/{conversation['id']}", {"title": f"e2e {tag}"}
        ),
        Record("agent-orchestration", f"/api/agents/agents/{agent['id']}", {"name": agent["name"]}),
    ]


def _read_all(client: httpx.Client, records: list[Record]) -> None:
    for record in records:
        r = client.get(record.path)
        assert r.status_code == 200, f"GET {record.path}: {r.status_code} {r.text[:300]}"
        assert {k: r.json().get(k) for k in record.expect} == record.expect, record.path


def _pods(e2e: E2ECluster) -> list[dict[str, Any]]:
    return json.loads(e2e.k("get", "pods", "-n", e2e.namespace, "-o", "json").stdout)["items"]


def test_every_module_ready_with_running_pods(e2e: E2ECluster, client: httpx.Client) -> None:
    modules = json.loads(e2e.k("get", "bhivmodules", "-n", e2e.namespace, "-o", "json").stdout)[
        "items"
    ]
    ready = {
        m["metadata"]["name"]: next(
            (c["status"] for c in m["status"].get("conditions", []) if c["type"] == "Ready"), None
        )
        for m in modules
    }
    assert ready == dict.fromkeys(MODULES, "True"), ready
    running = [p for p in _pods(e2e) if p["status"]["phase"] == "Running"]
    # One pod per module plus the operator, every container started by the runtime and ready.
    assert len(running) == len(MODULES) + 1, [p["metadata"]["name"] for p in _pods(e2e)]
    for pod in running:
        assert [c["image"] for c in pod["spec"]["containers"]] == [e2e.image], pod["metadata"][
            "name"
        ]
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["state"].get("running"), pod["metadata"]["name"]
    r = client.get("/services")
    assert r.status_code == 200, r.text
    assert r.json()["discovery"] == "kubernetes"
    status = {s["name"]: s["status"] for s in r.json()["services"]}
    assert {name: status.get(name) for name in SERVICES} == dict.fromkeys(SERVICES, "up"), status


def test_startup_hooks_ran_in_stage_order(e2e: E2ECluster) -> None:
    # The hook Jobs are deleted once they succeed; their events stay behind.
    events = json.loads(
        e2e.k(
            "get",
            "events",
            "-n",
            e2e.namespace,
            "--field-selector",
            "involvedObject.kind=Job",
            "-o",
            "json",
        ).stdout
    )["items"]
    completed = {
        e["involvedObject"]["name"]: e.get("eventTime")
        or e.get("lastTimestamp")
        or e["metadata"]["creationTimestamp"]
        for e in events
        if e["reason"] == "Completed"
    }
    stages = sorted({entry.stage for entry in catalog.SERVICES.values()})
    jobs = [f"{RELEASE}-wait-stage-{n}" for n in range(1, len(stages) + 1)]
    assert set(jobs) <= set(completed), sorted(completed)
    times = [completed[job] for job in jobs]
    assert times == sorted(times), dict(zip(jobs, times, strict=True))


def test_helm_test_passes(e2e: E2ECluster) -> None:
    # No --logs: the chart's test pod is deleted once it succeeds (hook-succeeded).
    out = e2e.h(
        "test", RELEASE, "--namespace", e2e.namespace, "--timeout", "5m", timeout=400
    ).stdout
    assert "Phase:          Succeeded" in out, out


def test_data_created_and_read_in_every_service(
    client: httpx.Client, records: list[Record]
) -> None:
    assert {r.service for r in records} == SERVICES
    _read_all(client, records)
    # Without a credential the gateway refuses before any service is reached.
    assert httpx.get(f"{client.base_url}{records[0].path}", timeout=15).status_code == 401


def test_token_minted_with_the_release_secret(e2e: E2ECluster) -> None:
    """NOTES.txt's way: `bhiv token` with the JWT Secret the chart generated."""
    encoded = e2e.k(
        "get",
        "secret",
        f"{RELEASE}-jwt",
        "-n",
        e2e.namespace,
        "-o",
        "jsonpath={.data.BHIV_JWT_SECRET}",
    ).stdout
    env = {**os.environ, "BHIV_JWT_SECRET": base64.b64decode(encoded).decode()}
    minted = (
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bhiv", "token", "--role", "viewer"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    r = httpx.get(
        f"{e2e.ingress_url}/services", headers={"Authorization": f"Bearer {minted}"}, timeout=15
    )
    assert r.status_code == 200, r.text


def test_operator_restores_a_deleted_deployment(
    e2e: E2ECluster, client: httpx.Client, records: list[Record]
) -> None:
    e2e.k("delete", "deployment", "logistics", "-n", e2e.namespace)
    started = time.monotonic()
    logistics = next(r for r in records if r.service == "logistics")

    def answering() -> bool:
        ready = e2e.k(
            "get",
            "deployment",
            "logistics",
            "-n",
            e2e.namespace,
            "-o",
            "jsonpath={.status.readyReplicas}",
            check=False,
        ).stdout
        return ready == "1" and client.get(logistics.path).status_code == 200

    eventually(
        answering,
        timeout=300,
        interval=2,
        what="the operator to recreate logistics, answering again",
    )
    print(f"logistics restored and answering after {time.monotonic() - started:.0f}s")  # noqa: T201
    _read_all(client, [logistics])  # the data lives in its database, not in the pod


@dataclass
class Poller:
    """Reads every record through the Ingress in a loop and counts what came back."""

    client: httpx.Client
    records: list[Record]
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for record in self.records:
                try:
                    r = self.client.get(record.path)
                    ok = r.status_code == 200
                    detail = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                self.answers[record.service] += 1
                if not ok:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} GET {record.path}: {detail}")

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_upgrade_to_a_new_image_without_failed_requests(
    e2e: E2ECluster, client: httpx.Client, records: list[Record]
) -> None:
    new_image = e2e.upgrade_image()
    before = {p["metadata"]["name"] for p in _pods(e2e)}
    with Poller(client, records) as poller:
        time.sleep(2)  # answers before the rollout starts, too
        started = time.monotonic()
        e2e.h(
            "upgrade", RELEASE, str(CHART),
            "--namespace", e2e.namespace, "-f", str(e2e.values_file(new_image)),
            "--wait", "--timeout", "15m", timeout=1000,
        )  # fmt: skip

        def rolled() -> bool:
            pods = _pods(e2e)
            # The pod's spec names the tag; its status may name another tag of the
            # same image (containerd reports the first), so it is not compared.
            return len(pods) == len(MODULES) + 1 and all(
                p["status"]["phase"] == "Running"
                and [c["image"] for c in p["spec"]["containers"]] == [new_image]
                and all(s["ready"] for s in p["status"]["containerStatuses"])
                for p in pods
            )

        eventually(rolled, timeout=600, interval=2, what=f"every pod running {new_image} and ready")
        took = time.monotonic() - started
        time.sleep(5)  # and after it
    print(
        f"upgrade rolled {len(MODULES) + 1} Deployments in {took:.0f}s; "
        f"reads: {dict(poller.answers)}"
    )  # noqa: T201
    if poller.failures:
        by_service = Counter(f.split(" ")[2].split("/")[2] for f in poller.failures)
        pytest.fail(
            f"{len(poller.failures)} failed reads during the rollout {dict(by_service)}:\n"
            + "\n".join(poller.failures[:10]),
            pytrace=False,
        )
    assert min(poller.answers.values()) >= 10, poller.answers  # the client really polled throughout
    assert not before & {p["metadata"]["name"] for p in _pods(e2e)}, "some pods were not replaced"
    _read_all(client, records)


def test_uninstall_removes_everything_but_the_kept_secret(e2e: E2ECluster) -> None:
    e2e.h(
        "uninstall", RELEASE, "--namespace", e2e.namespace, "--wait", "--timeout", "5m", timeout=400
    )

    def left() -> list[str] | None:
        names = e2e.k(
            "get",
            "deployments,services,pods,jobs,bhivmodules,ingresses,configmaps,secrets,"
            "serviceaccounts,roles,rolebindings",
            "-n", e2e.namespace, "-o", "name",
        ).stdout.split()  # fmt: skip
        # Always there in a namespace: the root CA ConfigMap and the default ServiceAccount.
        names = [
            n for n in names if n not in {"configmap/kube-root-ca.crt", "serviceaccount/default"}
        ]
        return names if names == [f"secret/{RELEASE}-jwt"] else None

    eventually(
        left, timeout=300, interval=2, what=f"only secret/{RELEASE}-jwt left in {e2e.namespace}"
    )
    e2e.k("get", "crd", "bhivmodules.bhiv.io")  # CRDs stay (Helm never deletes them)
