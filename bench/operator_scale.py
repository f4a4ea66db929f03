"""The operator at scale, against applying the same objects directly, on a local kwok
cluster: how long until N modules' children are applied and Ready, what the operator
adds to a change's latency, its memory and its API requests.

    .venv/bin/python bench/operator_scale.py [--sizes 100,500] [--changes 300] [--rate 10]

For each N, in fresh namespaces of one cluster (`hack/kwok-cluster`, named by
--cluster, started here if needed and stopped afterwards unless it was running):
  direct    a client (4 requests in flight) server-side-applies N Deployments,
            Services and HPAs built by the operator's own builders; timed until a
            watch has seen every Deployment (applied) and every one Available (Ready).
            Then K Deployments change (spec.template's env) at --rate changes/s: the
            time from each apply's answer to the watch seeing that template.
  operator  the operator runs (`bhiv operator`, 4 reconcile workers) and the client
            (4 requests in flight) creates N BhivModules (autoscaling on, no
            dependencies); timed until every Deployment is applied and every module
            Ready. Then K modules change (spec.env) at the same rate: from the PATCH's
            answer to the watch seeing the Deployment with the new template (the
            operator's own latency, independent of pods starting), and to the module
            Ready at its new generation. Then one full resync of the N modules, idle:
            the API requests it sent. The operator's peak RSS (VmHWM) and its API
            requests by verb over the whole run, from its metrics (its own client;
            Kopf's watches of modules and pods are not counted).
Prints figures, never a verdict; the goals are in docs/operator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightkube import AsyncClient, Client  # noqa: E402
from lightkube.core.resource import NamespacedResource  # noqa: E402
from lightkube.resources.apps_v1 import Deployment  # noqa: E402
from lightkube.resources.core_v1 import Namespace, Node  # noqa: E402
from lightkube.types import PatchType  # noqa: E402

from bench.results import record  # noqa: E402
from bhiv import kube  # noqa: E402
from bhiv.operator import FIELD_MANAGER, builders  # noqa: E402
from bhiv.operator.kube import Kube  # noqa: E402
from bhiv.operator.model import Module  # noqa: E402

# Below the ephemeral range: the operator's metrics port cannot be taken by a client.
from tests.support.net import free_port  # noqa: E402

CONCURRENCY = 4
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def module_body(name: str, namespace: str, env_value: str = "0") -> dict[str, Any]:
    return {
        "apiVersion": "bhiv.io/v1alpha1",
        "kind": "BhivModule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": "logistics",
            "image": "bhiv-core:bench",
            "database": {"secretRef": {"name": "bench-db"}},  # no claim: pods only
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
            "env": [{"name": "BENCH", "value": env_value}],
        },
    }


def direct_objects(name: str, namespace: str, env_value: str = "0") -> list[dict[str, Any]]:
    """What the operator applies for that module (Service, Deployment, HPA; no PDB with
    one pod at least, no NetworkPolicy unless asked for)."""
    body = module_body(name, namespace, env_value)
    body["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}.{name}"))
    m = Module.from_body(body)
    optional = (builders.build_hpa(m), builders.build_pdb(m))
    objs = [builders.build_service(m), builders.build_deployment(m, replicas=None)]
    objs += [o for o in optional if o is not None]
    for o in objs:
        o["metadata"].pop("ownerReferences", None)  # no module owns these
    return objs


def new_namespace(api: Client, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api.create(cast(Namespace, Namespace.from_dict({"metadata": {"name": name}})))
    return name


def delete_namespace(api: Client, name: str, timeout: float = 300) -> None:
    """Delete and wait until it is gone, so its clean-up does not load the next phase."""
    api.delete(Namespace, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.get(Namespace, name)
        except kube.ApiError as exc:
            if kube.status_code(exc) == 404:
                return
            raise
        time.sleep(1)


def env_value(obj: dict[str, Any]) -> str | None:
    """The BENCH variable of a Deployment's (first) container."""
    containers = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or [{}]
    for var in containers[0].get("env") or ():
        if var.get("name") == "BENCH":
            return str(var.get("value"))
    return None


def available(obj: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Available" and c["status"] == "True"
        for c in (obj.get("status") or {}).get("conditions") or ()
    )


def ready_generation(obj: dict[str, Any]) -> int | None:
    """A module's observedGeneration when its Ready condition is True, else None."""
    status = obj.get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ()
    )
    return int(status.get("observedGeneration") or 0) if ready else None


class Recorder:
    """Follows one kind in a namespace with bhiv.kube.list_watch, on an event loop in a
    thread of its own, and records when each object was first seen in each state of
    interest (``states(obj)`` names them). ``stop()`` ends the watch and closes its
    client before returning, so nothing is left to fail when the cluster goes away."""

    def __init__(
        self,
        kubeconfig: str,
        resource: type[NamespacedResource],
        namespace: str,
        states: Callable[[dict[str, Any]], Iterable[Any]],
    ) -> None:
        self.first: dict[tuple[str, Any], float] = {}
        self._states = states
        self._loop = asyncio.new_event_loop()
        self._listed = threading.Event()
        self._task = self._loop.create_task(self._run(kubeconfig, resource, namespace))
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._listed.wait(60):
            self.stop()
            raise TimeoutError(f"no listing of {resource.__name__} in {namespace} within 60s")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _run(
        self, kubeconfig: str, resource: type[NamespacedResource], namespace: str
    ) -> None:
        api = kube.client(kubeconfig=kubeconfig)
        try:
            async for update in kube.list_watch(api, resource, namespace):
                now = time.monotonic()
                if isinstance(update, kube.Listing):
                    seen = update.items
                    self._listed.set()
                elif update.type in ("ADDED", "MODIFIED"):
                    seen = [update.object]
                else:
                    continue
                for obj in seen:
                    name = obj["metadata"]["name"]
                    for state in self._states(obj):
                        self.first.setdefault((name, state), now)
        finally:
            await api.close()

    def at(self, name: str, state: Any) -> float | None:
        return self.first.get((name, state))

    def count(self, state: Any) -> int:
        return sum(1 for _, s in list(self.first) if s == state)

    def wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TimeoutError(f"{what}: not after {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(30)


def deployment_states(obj: dict[str, Any]) -> Iterable[Any]:
    yield "applied"
    yield ("env", env_value(obj))
    if available(obj):
        yield "available"


def module_states(obj: dict[str, Any]) -> Iterable[Any]:
    generation = ready_generation(obj)
    if generation is not None:
        yield "ready"
        yield ("ready", generation)


def apply_all(objs: list[dict[str, Any]]) -> None:
    async def main() -> None:
        client = Kube()
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(obj: dict[str, Any]) -> None:
            async with sem:
                await client.apply(obj)

        try:
            await asyncio.gather(*(one(o) for o in objs))
        finally:
            await client.close()

    asyncio.run(main())


def create_modules(kubeconfig: str, namespace: str, names: list[str]) -> dict[str, float]:
    """Create the modules, CONCURRENCY at a time; when each create was sent."""
    sent: dict[str, float] = {}

    async def main() -> None:
        api: AsyncClient = kube.client(kubeconfig=kubeconfig)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(name: str) -> None:
            async with sem:
                sent[name] = time.monotonic()
                body = kube.BhivModule.from_dict(module_body(name, namespace))
                await api.create(cast(Any, body))

        try:
            await asyncio.gather(*(one(n) for n in names))
        finally:
            await api.close()

    asyncio.run(main())
    return sent


def paced(names: list[str], rate: float, change: Callable[[str], None]) -> dict[str, float]:
    """``change(name)`` for each name, ``rate`` per second; when each was accepted (answered)."""
    accepted: dict[str, float] = {}
    start = time.monotonic()
    for k, name in enumerate(names):
        pause = start + k / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        change(name)
        accepted[name] = time.monotonic()
    return accepted


def latencies(
    recorder: Recorder, accepted: dict[str, float], state: Callable[[str], Any]
) -> list[float]:
    """Seen minus accepted, per change; a watch may deliver an object before the client
    has read the answer to the request that wrote it (0 then)."""
    out = []
    for name, t in accepted.items():
        seen = recorder.at(name, state(name))
        if seen is not None:
            out.append(max(0.0, seen - t))
    return out


def run_direct(api: Client, kubeconfig: str, n: int, changes: int, rate: float) -> dict[str, Any]:
    ns = new_namespace(api, "bench-direct")
    names = [f"m{i}" for i in range(n)]
    deployments = Recorder(kubeconfig, Deployment, ns, deployment_states)
    try:
        objs = [o for name in names for o in direct_objects(name, ns)]
        start = time.monotonic()
        apply_all(objs)
        deployments.wait(lambda: deployments.count("applied") >= n, "direct: applied", 60 + n)
        applied = max(deployments.at(m, "applied") or 0 for m in names) - start
        deployments.wait(lambda: deployments.count("available") >= n, "direct: Available", 120 + n)
        ready = max(deployments.at(m, "available") or 0 for m in names) - start

        changed = random.sample(names, min(changes, n))

        def change(name: str) -> None:
            deployment = next(o for o in direct_objects(name, ns, "1") if o["kind"] == "Deployment")
            api.patch(
                Deployment,
                name,
                deployment,
                namespace=ns,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )

        accepted = paced(changed, rate, change)
        deployments.wait(
            lambda: all(deployments.at(m, ("env", "1")) for m in changed), "direct: changes", 120
        )
        to_applied = latencies(deployments, accepted, lambda _: ("env", "1"))
    finally:
        deployments.stop()
    delete_namespace(api, ns)
    return {"applied": applied, "ready": ready, "change_applied": to_applied}


def start_operator(
    namespace: str, kubeconfig: str, log: Path, metrics_port: int, resync_seconds: float
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bhiv",
            "operator",
            "--namespace",
            namespace,
            "--kubeconfig",
            kubeconfig,
            "--listen-host",
            "127.0.0.1",
            "--liveness-port",
            "0",
            "--metrics-port",
            str(metrics_port),
            "--resync-seconds",
            str(resync_seconds),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def scrape(port: int) -> dict[str, Any]:
    """The operator's API requests by verb, reconciles, resyncs and queue depth."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    requests: Counter[str] = Counter()
    out: dict[str, Any] = {"requests": requests, "reconciles": 0.0, "resyncs": 0.0, "depth": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bhiv_operator_api_requests_total":
                requests[sample.labels["verb"]] += int(sample.value)
            elif sample.name == "bhiv_operator_reconciles_total":
                out["reconciles"] += sample.value
            elif sample.name == "bhiv_operator_resyncs_total":
                out["resyncs"] = sample.value
            elif sample.name == "bhiv_operator_queue_depth":
                out["depth"] = sample.value
    return out


def wait_metrics(
    port: int, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(port)
        if done(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def run_operator(
    api: Client,
    kubeconfig: str,
    n: int,
    changes: int,
    rate: float,
    resync_seconds: float,
    log: Path,
) -> dict[str, Any]:
    ns = new_namespace(api, "bench-operator")
    names = [f"m{i}" for i in range(n)]
    port = free_port()
    op = start_operator(ns, kubeconfig, log, port, resync_seconds)
    recorders: list[Recorder] = []
    try:
        deadline = time.monotonic() + 60
        while True:  # the metrics port answers once the operator runs
            try:
                scrape(port)
                break
            except httpx.HTTPError:
                if op.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not start; see {log}") from None
                time.sleep(0.5)
        deployments = Recorder(kubeconfig, Deployment, ns, deployment_states)
        recorders.append(deployments)
        modules = Recorder(kubeconfig, kube.BhivModule, ns, module_states)
        recorders.append(modules)
        time.sleep(3)  # the operator's watches are up
        start = time.monotonic()
        sent = create_modules(kubeconfig, ns, names)
        deployments.wait(
            lambda: deployments.count("applied") >= n, "operator: applied", 120 + 2 * n
        )
        applied = max(deployments.at(m, "applied") or 0 for m in names) - start
        modules.wait(lambda: modules.count("ready") >= n, "operator: Ready", 120 + 2 * n)
        ready = max(modules.at(m, "ready") or 0 for m in names) - start
        create_applied = [(deployments.at(m, "applied") or 0) - sent[m] for m in names]
        create_ready = [(modules.at(m, "ready") or 0) - sent[m] for m in names]

        changed = random.sample(names, min(changes, n))
        generation: dict[str, int] = {}

        def change(name: str) -> None:
            body = api.patch(
                kube.BhivModule,
                name,
                {"spec": {"env": [{"name": "BENCH", "value": "1"}]}},
                namespace=ns,
                patch_type=PatchType.MERGE,
            )
            generation[name] = int(body["metadata"]["generation"])

        accepted = paced(changed, rate, change)
        deployments.wait(
            lambda: all(deployments.at(m, ("env", "1")) for m in changed), "operator: changes", 120
        )
        modules.wait(
            lambda: all(modules.at(m, ("ready", generation[m])) for m in changed),
            "operator: changes Ready",
            300,
        )
        to_applied = latencies(deployments, accepted, lambda _: ("env", "1"))
        to_ready = latencies(modules, accepted, lambda m: ("ready", generation[m]))

        # One full resync of an idle namespace: settle, then from one resync to the next.
        settled = wait_metrics(port, lambda m: m["depth"] == 0, 120)
        before = wait_metrics(
            port,
            lambda m: m["resyncs"] > settled["resyncs"] and m["depth"] == 0,
            3 * resync_seconds + 120,
        )
        after = wait_metrics(
            port,
            lambda m: m["resyncs"] > before["resyncs"] and m["depth"] == 0,
            3 * resync_seconds + 120,
        )
        memory = rss_mb(op.pid)
    finally:
        for recorder in recorders:
            recorder.stop()
        op.terminate()
        op.wait(60)
    delete_namespace(api, ns)
    resync = after["requests"] - before["requests"]
    requests = after["requests"]
    calls = sum(v for verb, v in requests.items() if verb != "watch")
    return {
        "applied": applied,
        "ready": ready,
        "create_applied": create_applied,
        "create_ready": create_ready,
        "change_applied": to_applied,
        "change_ready": to_ready,
        "rss_mb": memory.get("VmRSS", float("nan")),
        "peak_rss_mb": memory.get("VmHWM", float("nan")),
        "requests": dict(requests),
        "requests_per_reconcile": calls / max(after["reconciles"], 1),
        "resync_reconciles": after["reconciles"] - before["reconciles"],
        "resync_requests": {verb: v for verb, v in resync.items() if v},
    }


def p(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {percentile(values, 0.99):.3f}" if values else "-"


def report(n: int, direct: dict[str, Any], op: dict[str, Any]) -> None:
    rows = [
        (
            "all Deployments applied, s",
            f"{direct['applied']:.1f}",
            f"{op['applied']:.1f}",
            f"{op['applied'] / direct['applied']:.2f}",
        ),
        (
            "all Available / Ready, s",
            f"{direct['ready']:.1f}",
            f"{op['ready']:.1f}",
            f"{op['ready'] / direct['ready']:.2f}",
        ),
        (
            "change -> Deployment applied p50 / p99, s",
            p(direct["change_applied"]),
            p(op["change_applied"]),
            "",
        ),
        ("change -> module Ready p50 / p99, s", "", p(op["change_ready"]), ""),
        ("create -> Deployment applied p50 / p99, s", "", p(op["create_applied"]), ""),
        ("create -> module Ready p50 / p99, s", "", p(op["create_ready"]), ""),
    ]
    print(f"\nN = {n}")
    print(f"  {'':44} {'direct':>16} {'operator':>16} {'ratio':>6}")
    for label, d, o, r in rows:
        print(f"  {label:44} {d:>16} {o:>16} {r:>6}")
    added = (
        [
            statistics.median(op["change_applied"]) - statistics.median(direct["change_applied"]),
            percentile(op["change_applied"], 0.99) - percentile(direct["change_applied"], 0.99),
        ]
        if op["change_applied"] and direct["change_applied"]
        else [float("nan")] * 2
    )
    print(f"  operator-added latency of a change, p50 / p99: {added[0]:.3f} / {added[1]:.3f} s")
    print(
        f"  operator RSS: {op['rss_mb']:.0f} MB at the end, {op['peak_rss_mb']:.0f} MB peak (VmHWM)"
    )
    writes = sum(op["requests"].get(v, 0) for v in WRITES)
    print(
        f"  operator API requests (its own client): {json.dumps(op['requests'], sort_keys=True)};"
        f" {op['requests_per_reconcile']:.2f} per reconcile (watches left out), {writes} writes"
    )
    print(
        f"  one idle resync of {n} modules: {op['resync_reconciles']:.0f} reconciles,"
        f" requests {json.dumps(op['resync_requests'], sort_keys=True) if op['resync_requests'] else 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,500", help="comma-separated N")
    parser.add_argument("--changes", type=int, default=300, help="changes per path (at most N)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's resync")
    parser.add_argument("--cluster", default="bhiv-bench", help="hack/kwok-cluster --name")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    cluster_script = str(REPO / "hack" / "kwok-cluster")
    was_running = (
        subprocess.run(
            [cluster_script, "status", "--name", args.cluster], capture_output=True
        ).returncode
        == 0
    )
    nodes = max(sizes) // 100 + 2  # kwok nodes take 110 pods each
    sh(cluster_script, "up", "--name", args.cluster, "--nodes", str(nodes), timeout=600)
    kubeconfig = sh(cluster_script, "kubeconfig", "--name", args.cluster).stdout.strip()
    os.environ["KUBECONFIG"] = kubeconfig
    bin_dir = sh(str(REPO / "hack" / "k8s-tools"), "--print-bin-dir").stdout.strip()
    sh(
        f"{bin_dir}/kubectl",
        "--kubeconfig",
        kubeconfig,
        "apply",
        "--server-side",
        "-f",
        str(REPO / "manifests" / "crd"),
    )
    api = Client(kube.load_config(kubeconfig), field_manager="bhiv-bench")
    nodes = len(list(api.list(Node)))  # a running cluster keeps the nodes it has
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                direct = run_direct(api, kubeconfig, n, args.changes, args.rate)
                op = run_operator(
                    api,
                    kubeconfig,
                    n,
                    args.changes,
                    args.rate,
                    args.resync_seconds,
                    Path(tmp) / f"operator-{n}.log",
                )
                results.append((n, direct, op))
    finally:
        api.close()
        if not was_running:
            sh(cluster_script, "down", "--name", args.cluster, timeout=300)

    print(
        f"\noperator scale on kwok (cluster {args.cluster}, {nodes} nodes), {CONCURRENCY} requests"
        f" in flight on both paths, changes at {args.rate:g}/s, operator resync {args.resync_seconds:g} s"
    )
    for n, direct, op in results:
        report(n, direct, op)
    # Direct apply is the same run's baseline.
    record(
        "operator_scale",
        {str(n): _summary(o) for n, _, o in results},
        baseline={str(n): _summary(d) for n, d, _ in results},
    )


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    """A path's figures for the JSON record: each list of latencies as its p50 and p99."""
    return {
        k: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} if isinstance(v, list) else v
        for k, v in figures.items()
    }


if __name__ == "__main__":
    main()
