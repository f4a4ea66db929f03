"""BHIV Core installed by its Helm chart, with its defaults (the bundled PostgreSQL), on
a real cluster and used through the Ingress as a client would, from `helm install` to
`helm uninstall`. The tests run in file order and share one release: later ones
(delete pods, scale, upgrade, kill PostgreSQL, back up, reinstall, restore, uninstall)
change it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from bhiv import catalog
from tests.e2e.conftest import CHART, POSTGRES_CLAIM, RELEASE, E2ECluster, wait_for_gateway
from tests.support import browser
from tests.support.net import free_port
from tests.support.realnode import eventually

MODULES = set(catalog.SERVICES)
SERVICES = MODULES - {"gateway"}
POSTGRES = f"{RELEASE}-postgresql"
# Secrets the chart generates once and keeps on uninstall (docs/helm.md).
KEPT_SECRETS = (f"{RELEASE}-credentials", f"{RELEASE}-jwt", f"{RELEASE}-postgresql")


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


def _pods(e2e: E2ECluster, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", "pods", "-n", e2e.namespace, "-o", "json"]
    return json.loads(e2e.k(*args, *(["-l", selector] if selector else [])).stdout)["items"]


def _workload_pods(e2e: E2ECluster) -> list[dict[str, Any]]:
    """The modules' pods and the operator's (not PostgreSQL's, nor hook pods)."""
    return [
        p
        for p in _pods(e2e)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") in MODULES | {"operator"}
        and p["metadata"].get("deletionTimestamp") is None
    ]


def _ready_pod(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and all(
        s["ready"] for s in pod["status"].get("containerStatuses") or [{"ready": False}]
    )


def _postgresql_ready(e2e: E2ECluster) -> bool:
    ready = e2e.k(
        "get", "statefulset", POSTGRES, "-n", e2e.namespace,
        "-o", "jsonpath={.status.readyReplicas}", check=False,
    ).stdout  # fmt: skip
    return ready == "1"


def _psql(e2e: E2ECluster, sql: str, *, user: str = "postgres", database: str = "postgres",
          check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """psql in the PostgreSQL pod, on its local socket (trusted there: no password)."""
    return e2e.k(
        "exec", f"{POSTGRES}-0", "-n", e2e.namespace, "--",
        "psql", "-U", user, "-d", database, "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql,
        check=check,
    )  # fmt: skip


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
    # Every module but the gateway on its own database of the bundled PostgreSQL.
    refs = {
        m["metadata"]["name"]: (m["spec"].get("database") or {}).get("secretRef") for m in modules
    }
    assert refs == {
        **{name: {"name": POSTGRES, "key": name} for name in SERVICES},
        "gateway": None,
    }
    running = [p for p in _workload_pods(e2e) if p["status"]["phase"] == "Running"]
    # One pod per module plus the operator, every container started by the runtime and ready.
    assert len(running) == len(MODULES) + 1, [p["metadata"]["name"] for p in _pods(e2e)]
    for pod in running:
        assert [c["image"] for c in pod["spec"]["containers"]] == [e2e.image], pod["metadata"][
            "name"
        ]
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["state"].get("running"), pod["metadata"]["name"]
    # PostgreSQL: Ready, on a bound volume claim.
    assert _postgresql_ready(e2e)
    phase = e2e.k(
        "get", "pvc", POSTGRES_CLAIM, "-n", e2e.namespace, "-o", "jsonpath={.status.phase}"
    )
    assert phase.stdout == "Bound"
    r = client.get("/services")
    assert r.status_code == 200, r.text
    assert r.json()["discovery"] == "kubernetes"
    status = {s["name"]: s["status"] for s in r.json()["services"]}
    assert {name: status.get(name) for name in SERVICES} == dict.fromkeys(SERVICES, "up"), status


def test_each_service_owns_a_database_no_other_can_open(e2e: E2ECluster) -> None:
    owners = _psql(
        e2e,
        "SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database"
        " WHERE datname LIKE 'bhiv\\_%' ORDER BY 1",
    ).stdout.split()
    names = sorted("bhiv_" + s.replace("-", "_") for s in SERVICES)
    assert owners == [f"{n}={n}" for n in names]
    # Logistics' role may not even open CRM's database (its tables are out of reach).
    refused = _psql(e2e, "SELECT 1", user="bhiv_logistics", database="bhiv_crm", check=False)
    assert refused.returncode != 0 and "permission denied for database" in refused.stderr


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


def _release_token(e2e: E2ECluster, *args: str) -> str:
    """`bhiv token ARGS` signed with the JWT Secret the chart generated (NOTES.txt's way)."""
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
    return (
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bhiv", "token", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


def test_token_minted_with_the_release_secret(e2e: E2ECluster) -> None:
    """NOTES.txt's way: `bhiv token` with the JWT Secret the chart generated."""
    minted = _release_token(e2e, "--role", "viewer")
    r = httpx.get(
        f"{e2e.ingress_url}/services", headers={"Authorization": f"Bearer {minted}"}, timeout=15
    )
    assert r.status_code == 200, r.text


def test_batch_through_the_ingress_never_acts_as_another_tenant(e2e: E2ECluster) -> None:
    """Issue 16 item 1 through the chart: two callers with `bhiv token`'s default subject
    in two tenants; the second lists the first's LLM conversations through /batch."""

    def batch(token: str, item: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(
            f"{e2e.ingress_url}/batch",
            json={"requests": [item]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    acme = _release_token(e2e, "--role", "editor", "--tenant", "acme")
    globex = _release_token(e2e, "--role", "editor", "--tenant", "globex")
    title = f"acme-{uuid.uuid4().hex[:8]}"
    conversation = {"method": "POST", "path": "/api/llm/conversations", "body": {"title": title}}
    created = batch(acme, conversation)
    assert created["status"] == 201, created
    seen = batch(globex, {"path": "/api/llm/conversations?limit=500"})
    assert seen["status"] == 200, seen
    assert title not in [c["title"] for c in seen["body"]["items"]]
    own = batch(acme, {"path": "/api/llm/conversations?limit=500"})
    assert title in [c["title"] for c in own["body"]["items"]]


def test_gateway_metrics_are_not_public_through_the_ingress(
    e2e: E2ECluster, client: httpx.Client
) -> None:
    """Issue 16 item 10 through the chart: the gateway's metrics name upstream addresses,
    so an anonymous caller of the Ingress gets 401; an admin still scrapes them. (Path
    confusion is the gateway's own check, tested over HTTP in tests/service/gateway:
    Traefik already resolves dot segments before the gateway sees a path.)"""
    assert httpx.get(f"{e2e.ingress_url}/metrics", timeout=15).status_code == 401
    assert client.get("/metrics").status_code == 200


def test_the_console_through_the_ingress(e2e: E2ECluster) -> None:
    """Issue 22 through the chart: the web console at /console behind the Ingress, in
    Chromium, signed in with a token from the release's Secret: every module in the graph,
    laid out by its dependsOn, up."""
    with browser.chromium() as chromium, browser.console_page(chromium) as page:
        browser.sign_in(page, f"{e2e.ingress_url}/console", _release_token(e2e, "--role", "viewer"))
        graph = page.locator("#platform-graph")
        for name in MODULES:
            graph.locator(f'g.node[data-id="{name}"][data-state="up"]').wait_for(timeout=60_000)
        edge = 'path.edge[data-from="agent-orchestration"][data-to="gateway"]'
        assert graph.locator(edge).count() == 1
        assert page.locator("#graph-basis").inner_text() == "the BhivModules' dependsOn"
        browser.screenshot(page, "platform-ingress")


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


@pytest.fixture(scope="module")
def webhook_source(client: httpx.Client) -> dict[str, str]:
    """An inbound webhook source; its signing secret is stored encrypted with the
    release's credentials key."""
    return _create(
        client, "/api/integrations/webhook-sources", {"name": f"e2e-{uuid.uuid4().hex[:8]}"}
    )


def _send_webhook(e2e: E2ECluster, target: str | None, source: dict[str, str]) -> int:
    """A signed inbound webhook with no bearer token: a sender authenticates with its
    signature alone. Through the Ingress and the gateway (which learns from the
    integrations service that the path is public) when ``target`` is None, else to
    ``target`` (an integrations pod) through a port-forward."""
    body = json.dumps({"type": "e2e.ping", "at": time.time()})
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(source["secret"]).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    if target is None:
        return httpx.post(
            f"{e2e.ingress_url}/api/integrations/webhooks/{source['name']}",
            content=body, headers=headers, timeout=15,
        ).status_code  # fmt: skip
    port = catalog.get("integrations").port
    with _port_forward(e2e, target, port) as local:
        return httpx.post(
            f"http://127.0.0.1:{local}/webhooks/{source['name']}",
            content=body, headers=headers, timeout=15,
        ).status_code  # fmt: skip


def test_integrations_pod_replaced_still_decrypts_stored_secrets(
    e2e: E2ECluster, client: httpx.Client, webhook_source: dict[str, str]
) -> None:
    assert _send_webhook(e2e, None, webhook_source) == 202
    before = {p["metadata"]["name"] for p in _pods(e2e, "app.kubernetes.io/instance=integrations")}
    e2e.k("delete", "pod", "-n", e2e.namespace, "-l", "app.kubernetes.io/instance=integrations")

    def replaced_and_verifying() -> bool:
        pods = _pods(e2e, "app.kubernetes.io/instance=integrations")
        fresh = [p for p in pods if p["metadata"]["name"] not in before and _ready_pod(p)]
        verified = bool(fresh) and all(
            _send_webhook(e2e, f"pod/{p['metadata']['name']}", webhook_source) == 202 for p in fresh
        )
        # ... and routed by the gateway again.
        path = f"/api/integrations/webhook-sources/{webhook_source['id']}"
        return verified and client.get(path).status_code == 200

    # The new pod has the release's key (not one of its own): the stored signing
    # secret decrypts and the signature verifies.
    eventually(
        replaced_and_verifying, timeout=300, interval=2, what="a new integrations pod verifying"
    )


def test_every_pod_deleted_at_once_keeps_all_data(
    e2e: E2ECluster, client: httpx.Client, records: list[Record]
) -> None:
    _read_all(client, records)
    started = time.monotonic()
    # Services, operator and PostgreSQL together, as a node restart would.
    e2e.k("delete", "pods", "--all", "-n", e2e.namespace, "--wait=false")

    def all_back() -> bool:
        try:
            _read_all(client, records)
        except AssertionError:
            return False
        return _postgresql_ready(e2e)

    eventually(all_back, timeout=600, interval=3, what="every record readable again")
    print(f"every pod deleted: all data back after {time.monotonic() - started:.0f}s")  # noqa: T201


def _fail_on(poller: Poller, during: str) -> None:
    if poller.failures:
        by_service = Counter(f.split(" ")[2].split("/")[2] for f in poller.failures)
        pytest.fail(
            f"{len(poller.failures)} failed reads during {during} {dict(by_service)}:\n"
            + "\n".join(poller.failures[:10]),
            pytrace=False,
        )
    assert min(poller.answers.values()) >= 10, poller.answers  # the client really polled throughout


def _in_pod(e2e: E2ECluster, pod: str, path: str, token: str) -> dict[str, Any]:
    """GET ``path`` from inside one pod, on its own port: that pod's answer alone."""
    script = (
        "import os, sys, urllib.request as u; "
        "r = u.Request('http://127.0.0.1:' + os.environ['BHIV_PORT'] + sys.argv[1], "
        "headers={'Authorization': 'Bearer ' + sys.stdin.read().strip()}); "
        "print(u.urlopen(r, timeout=10).read().decode())"
    )
    out = subprocess.run(  # noqa: S603 - the token goes on stdin, never on a command line
        [e2e.kubectl, "exec", "-i", pod, "-n", e2e.namespace, "--", "python3", "-c", script, path],
        env=e2e.env, input=token, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"GET {path} in {pod}: {out.stderr[-500:]}"
    return json.loads(out.stdout)


def _upgrade_logistics(
    e2e: E2ECluster,
    client: httpx.Client,
    records: list[Record],
    logistics: dict[str, Any],
    during: str,
) -> int:
    """`helm upgrade` with Logistics' values changed to ``logistics`` while a client polls
    every record through the Ingress (no read may fail); returns its ready pods (>= 3)."""
    e2e.overrides = {"services": {"logistics": logistics}}

    def ready() -> int:
        return len([p for p in _pods(e2e, "app.kubernetes.io/instance=logistics") if _ready_pod(p)])

    with Poller(client, records) as poller:
        time.sleep(2)
        e2e.h(
            "upgrade", RELEASE, str(CHART),
            "--namespace", e2e.namespace, "-f", str(e2e.values_file(e2e.image)),
            "--wait", "--timeout", "15m", timeout=1000,
        )  # fmt: skip
        eventually(lambda: ready() >= 3, timeout=300, interval=2, what="3 logistics pods ready")
        time.sleep(3)
    _fail_on(poller, during)
    return ready()


def test_logistics_scaled_out_keeps_stock_consistent(
    e2e: E2ECluster, client: httpx.Client, records: list[Record]
) -> None:
    # `helm upgrade` changing a value (Logistics' replicas): no read fails meanwhile.
    pods = _upgrade_logistics(e2e, client, records, {"replicas": 3}, "the scale-out")
    assert pods == 3
    _race_reservations_through_the_ingress(e2e, client, pods=3)


def test_logistics_autoscaled_keeps_stock_consistent(
    e2e: E2ECluster, client: httpx.Client, records: list[Record]
) -> None:
    """The same with autoscaling on: the HPA owns the replica count (at least 3 here)."""
    autoscaling = {"enabled": True, "minReplicas": 3, "maxReplicas": 4,
                   "targetCPUUtilizationPercentage": 80}  # fmt: skip
    pods = _upgrade_logistics(
        e2e, client, records, {"autoscaling": autoscaling}, "switching autoscaling on"
    )
    hpa = e2e.k("get", "hpa", "logistics", "-n", e2e.namespace, "-o", "json", check=False)
    assert hpa.returncode == 0, hpa.stderr
    spec = json.loads(hpa.stdout)["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 4)
    _race_reservations_through_the_ingress(e2e, client, pods=pods)


def _race_reservations_through_the_ingress(
    e2e: E2ECluster, client: httpx.Client, pods: int
) -> None:
    """50 concurrent reservations of one unit against a stock of 10, through the Ingress:
    exactly 10 succeed, and every Logistics pod reads the same stock from the one database."""
    item = _create(
        client,
        "/api/logistics/inventory",
        {"sku": f"RACE-{uuid.uuid4().hex[:8].upper()}", "name": "race", "quantity": 10,
         "unit_cost": "1.00"},
    )  # fmt: skip

    def reserve(_: int) -> int:
        return client.post(
            f"/api/logistics/inventory/{item['id']}/movements",
            json={"type": "reservation", "quantity": 1},
        ).status_code

    with ThreadPoolExecutor(50) as pool:
        answers = Counter(pool.map(reserve, range(50)))
    assert answers == {201: 10, 409: 40}, answers
    token = client.headers["Authorization"].removeprefix("Bearer ")
    names = [p["metadata"]["name"] for p in _pods(e2e, "app.kubernetes.io/instance=logistics")
             if _ready_pod(p)]  # fmt: skip
    seen = {pod: _in_pod(e2e, pod, f"/inventory/{item['id']}", token) for pod in names}
    assert len(seen) == pods
    assert {(v["quantity"], v["reserved"]) for v in seen.values()} == {(10, 10)}, seen


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
            pods = _workload_pods(e2e)
            # The pod's spec names the tag; its status may name another tag of the
            # same image (containerd reports the first), so it is not compared.
            # Logistics runs 3 pods since the scale-out.
            return len(pods) == len(MODULES) + 2 + 1 and all(
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
    _fail_on(poller, "the rollout")
    after = {p["metadata"]["name"] for p in _workload_pods(e2e)}
    assert not before & after, "some pods were not replaced"
    _read_all(client, records)


def test_postgresql_killed_during_writes_loses_no_acknowledged_write(
    e2e: E2ECluster, client: httpx.Client
) -> None:
    """PostgreSQL stopped without a checkpoint (an immediate shutdown, as a crash) while
    clients write: every write answered 201 is there afterwards, the others were
    answered with a problem (never a hang), and the services recover by themselves."""
    acknowledged: list[int] = []
    refused: Counter[int] = Counter()
    hung: list[str] = []
    not_problems: list[str] = []
    stop = threading.Event()
    tag = uuid.uuid4().hex[:6]

    def write(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = client.post(
                    "/api/crm/customers",
                    json={"name": f"kill {tag}", "email": f"k-{tag}-{worker}-{n}@example.com"},
                )
            except httpx.TimeoutException as exc:
                hung.append(repr(exc))
                continue
            if r.status_code == 201:
                acknowledged.append(r.json()["id"])
            else:
                refused[r.status_code] += 1
                if r.headers.get("content-type") != "application/problem+json":
                    not_problems.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.2)

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(acknowledged) >= 20, timeout=60, what="writes before the kill")
        restarts = _restart_count(e2e)
        # The server's own immediate shutdown: no checkpoint, crash recovery at the next
        # start; the container exits and the kubelet starts it again.
        _stop_immediately(e2e)
        eventually(lambda: _restart_count(e2e) > restarts, timeout=120, what="PostgreSQL restarted")
        eventually(lambda: _postgresql_ready(e2e), timeout=300, interval=2, what="PostgreSQL ready")
        at_restart = len(acknowledged)
        eventually(
            lambda: len(acknowledged) >= at_restart + 20, timeout=300, interval=1,
            what="writes succeeding again without restarting any service",
        )  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print(f"writes: {len(acknowledged)} acknowledged, refused {dict(refused)}")  # noqa: T201
    assert not hung, hung[:5]
    assert not not_problems, not_problems[:5]
    assert set(refused) <= {502, 503, 504}, refused
    answers = {i: client.get(f"/api/crm/customers/{i}") for i in acknowledged}
    missing = {
        i: f"{r.status_code} {r.text[:300]}" for i, r in answers.items() if r.status_code != 200
    }
    assert not missing, (
        f"{len(missing)} acknowledged writes not read back: {list(missing.items())[:5]}"
    )


def _restart_count(e2e: E2ECluster) -> int:
    out = e2e.k(
        "get", "pod", f"{POSTGRES}-0", "-n", e2e.namespace,
        "-o", "jsonpath={.status.containerStatuses[0].restartCount}",
    ).stdout  # fmt: skip
    return int(out or 0)


def _stop_immediately(e2e: E2ECluster) -> None:
    e2e.k(
        "exec", f"{POSTGRES}-0", "-n", e2e.namespace, "--",
        "sh", "-c", 'pg_ctl stop -m immediate -D "$PGDATA"', check=False,
    )  # fmt: skip


@contextmanager
def _port_forward(e2e: E2ECluster, target: str, port: int) -> Iterator[int]:
    local = free_port()
    forward = subprocess.Popen(  # noqa: S603
        [e2e.kubectl, "port-forward", "-n", e2e.namespace, target, f"{local}:{port}"],
        env=e2e.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def listening() -> bool:
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", local)) == 0

        eventually(listening, timeout=30, interval=0.5, what=f"kubectl port-forward {target}")
        yield local
    finally:
        forward.terminate()
        forward.wait(timeout=30)


def _bhiv(*args: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BHIV_", "PG"))}
    return subprocess.run(  # noqa: S603 - the password goes in the environment
        [sys.executable, "-m", "bhiv", *args], env={**env, "PGPASSWORD": password},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _secret_value(e2e: E2ECluster, name: str, key: str) -> str:
    out = e2e.k("get", "secret", name, "-n", e2e.namespace, "-o", f"jsonpath={{.data.{key}}}")
    return base64.b64decode(out.stdout).decode()


def _kept(e2e: E2ECluster) -> list[str]:
    names = e2e.k(
        "get", "deployments,statefulsets,services,pods,jobs,bhivmodules,ingresses,configmaps,"
        "secrets,serviceaccounts,roles,rolebindings,persistentvolumeclaims",
        "-n", e2e.namespace, "-o", "name",
    ).stdout.split()  # fmt: skip
    # Always there in a namespace: the root CA ConfigMap and the default ServiceAccount.
    return sorted(
        n for n in names if n not in {"configmap/kube-root-ca.crt", "serviceaccount/default"}
    )


KEPT = sorted([f"persistentvolumeclaim/{POSTGRES_CLAIM}"] + [f"secret/{n}" for n in KEPT_SECRETS])


def test_backup_uninstall_fresh_install_restore(
    e2e: E2ECluster,
    client: httpx.Client,
    records: list[Record],
    webhook_source: dict[str, str],
    tmp_path: Path,
) -> None:
    """docs/helm.md's procedure: `bhiv backup` through a port-forward, uninstall (the
    Secrets and the volume claim stay), the volume lost, a fresh install, `bhiv restore`."""
    password = _secret_value(e2e, POSTGRES, "postgres-password")
    with _port_forward(e2e, f"svc/{POSTGRES}", 5432) as port:
        server = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        backup = _bhiv("backup", str(tmp_path / "backup"), "--server", server, password=password)
    assert backup.returncode == 0, backup.stderr
    assert password not in backup.stdout + backup.stderr
    e2e.h(
        "uninstall", RELEASE, "--namespace", e2e.namespace, "--wait", "--timeout", "5m", timeout=400
    )
    eventually(lambda: _kept(e2e) == KEPT, timeout=300, interval=2, what=f"only {KEPT} left")
    # The worst case: the volume is gone too (a new cluster); the kept Secrets are not.
    e2e.k("delete", "pvc", POSTGRES_CLAIM, "-n", e2e.namespace, "--wait=true", timeout=200)
    e2e.h(
        "install", RELEASE, str(CHART), "--namespace", e2e.namespace,
        "-f", str(e2e.values_file(e2e.image)), "--wait", "--timeout", "15m", timeout=1000,
    )  # fmt: skip
    wait_for_gateway(e2e.ingress_url)
    assert _secret_value(e2e, POSTGRES, "postgres-password") == password  # reused
    eventually(
        lambda: client.get(records[0].path).status_code == 404,
        timeout=120, interval=2, what="a fresh, empty database",
    )  # fmt: skip
    with _port_forward(e2e, f"svc/{POSTGRES}", 5432) as port:
        server = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        restore = _bhiv("restore", str(tmp_path / "backup"), "--server", server, password=password)
    assert restore.returncode == 0, restore.stderr
    _read_all(client, records)
    # The restored signing secret decrypts with the kept credentials key.
    assert _send_webhook(e2e, "svc/integrations", webhook_source) == 202
    # And the services write on the restored tables (owned by their own roles).
    _create(
        client,
        "/api/crm/customers",
        {"name": "after", "email": f"a-{uuid.uuid4().hex[:6]}@example.com"},
    )


def test_uninstall_keeps_only_the_secrets_and_the_database_volume(e2e: E2ECluster) -> None:
    e2e.h(
        "uninstall", RELEASE, "--namespace", e2e.namespace, "--wait", "--timeout", "5m", timeout=400
    )
    eventually(lambda: _kept(e2e) == KEPT, timeout=300, interval=2, what=f"only {KEPT} left")
    e2e.k("get", "crd", "bhivmodules.bhiv.io")  # CRDs stay (Helm never deletes them)
