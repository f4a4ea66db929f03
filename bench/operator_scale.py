"""The operator at scale: N BhivModules to Ready, against applying the same
objects directly, on a local kwok cluster.

    .venv/bin/python bench/operator_scale.py [--sizes 100,500] [--churn-seconds 30]

For each N, in fresh namespaces of one cluster (`hack/kwok-cluster`, named
bhiv-bench, started here if needed and stopped afterwards unless it was running):
  direct    one client (4 requests in flight) server-side-applies N Deployments,
            Services and HPAs built by the operator's own builders; timed until
            every Deployment is Available.
  operator  the operator runs (`bhiv operator`, 4 reconcile workers) and one
            client creates N BhivModules (autoscaling on, no dependencies); timed
            until every module is Ready. Per module, create-to-Ready latency.
  churn     at 10 changes/s, a module's spec.env changes (a rollout); latency
            until its status reports the new generation Ready.
Prints totals, the operator/direct ratio, p50/p99 latencies and the operator's
peak RSS (VmHWM). Targets for the record: ratio <= 1.3 at N=500, churn p99 < 5 s,
RSS < 150 MB at 1,000 modules.
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
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightkube import Client  # noqa: E402
from lightkube.core.resource import NamespacedResource  # noqa: E402
from lightkube.resources.apps_v1 import Deployment  # noqa: E402
from lightkube.resources.core_v1 import Namespace  # noqa: E402
from lightkube.types import PatchType  # noqa: E402

from bhiv import kube  # noqa: E402
from bhiv.operator import builders  # noqa: E402
from bhiv.operator.kube import Kube  # noqa: E402
from bhiv.operator.model import Module  # noqa: E402

CLUSTER = "bhiv-bench"
CONCURRENCY = 4


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)


def percentile(values: list[float], q: float) -> float:
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
            "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
            "env": [{"name": "BENCH", "value": env_value}],
        },
    }


def new_namespace(api: Client, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api.create(cast(Namespace, Namespace.from_dict({"metadata": {"name": name}})))
    return name


class ReadyWatch:
    """Follows one kind in a namespace (bhiv.kube.list_watch, on an event loop of its
    own in a thread) and records when each object was first seen ready."""

    def __init__(
        self, kubeconfig: str, resource: type[NamespacedResource], namespace: str, is_ready: Any
    ) -> None:
        self.ready_at: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._task = asyncio.run_coroutine_threadsafe(
            self._run(kubeconfig, resource, namespace, is_ready), self._loop
        )

    async def _run(
        self, kubeconfig: str, resource: type[NamespacedResource], namespace: str, is_ready: Any
    ) -> None:
        api = kube.client(kubeconfig=kubeconfig)
        try:
            async for update in kube.list_watch(api, resource, namespace):
                seen = update.items if isinstance(update, kube.Listing) else [update.object]
                for obj in seen:
                    name = (obj.get("metadata") or {}).get("name")
                    if name and name not in self.ready_at and is_ready(obj):
                        self.ready_at[name] = time.monotonic()
        finally:
            await api.close()

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready_at) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.ready_at)} of {count} ready after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._task.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)


def deployment_available(obj: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Available" and c["status"] == "True"
        for c in (obj.get("status") or {}).get("conditions") or ()
    )


def module_ready(obj: dict[str, Any], generation: dict[str, int] | None = None) -> bool:
    status = obj.get("status") or {}
    if generation is not None and status.get("observedGeneration", 0) < generation.get(
        obj["metadata"]["name"], 0
    ):
        return False
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ()
    )


async def apply_all(objs: list[dict[str, Any]]) -> None:
    kube = Kube()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(obj: dict[str, Any]) -> None:
        async with sem:
            await kube.apply(obj)

    await asyncio.gather(*(one(o) for o in objs))


def run_direct(api: Client, kubeconfig: str, n: int) -> float:
    ns = new_namespace(api, "bench-direct")
    watcher = ReadyWatch(kubeconfig, Deployment, ns, deployment_available)
    objs = []
    for i in range(n):
        body = module_body(f"m{i}", ns)
        body["metadata"]["uid"] = str(uuid.uuid4())  # owner refs need one; no owner exists here
        m = Module.from_body(body)
        objs += [
            o
            for o in (
                builders.build_service(m),
                builders.build_deployment(m, replicas=None),
                builders.build_hpa(m),
            )
            if o is not None  # no HPA without autoscaling
        ]
    for o in objs:
        o["metadata"].pop("ownerReferences", None)
    start = time.monotonic()
    asyncio.run(apply_all(objs))
    watcher.wait(n, timeout=60 + n)
    elapsed = max(watcher.ready_at.values()) - start
    watcher.stop()
    api.delete(Namespace, ns)
    return elapsed


def start_operator(namespace: str, kubeconfig: str, log: Path) -> subprocess.Popen[bytes]:
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
            "0",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_operator(
    api: Client,
    n: int,
    kubeconfig: str,
    churn_seconds: float,
    log: Path,
) -> dict[str, Any]:
    ns = new_namespace(api, "bench-operator")
    op = start_operator(ns, kubeconfig, log)
    time.sleep(3)  # the operator's watches are up
    try:
        watcher = ReadyWatch(kubeconfig, kube.BhivModule, ns, module_ready)
        created: dict[str, float] = {}
        start = time.monotonic()
        for i in range(n):
            created[f"m{i}"] = time.monotonic()
            api.create(cast(Any, kube.BhivModule.from_dict(module_body(f"m{i}", ns))))
        watcher.wait(n, timeout=120 + 2 * n)
        total = max(watcher.ready_at.values()) - start
        latencies = [watcher.ready_at[k] - created[k] for k in created]
        watcher.stop()

        churn: list[float] = []
        if churn_seconds > 0:
            generations: dict[str, int] = {}
            changed: dict[str, float] = {}
            churn_watch = ReadyWatch(
                kubeconfig,
                kube.BhivModule,
                ns,
                lambda o: module_ready(o, generations) and o["metadata"]["name"] in changed,
            )
            end = time.monotonic() + churn_seconds
            names = [f"m{i}" for i in range(n)]
            while time.monotonic() < end:
                name = random.choice(names)
                if name in changed:
                    continue
                body = api.patch(
                    kube.BhivModule,
                    name,
                    {"spec": {"env": [{"name": "BENCH", "value": "1"}]}},
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )
                generations[name] = body["metadata"]["generation"]
                changed[name] = time.monotonic()
                time.sleep(0.1)  # 10 changes per second
            churn_watch.wait(len(changed), timeout=120)
            churn = [churn_watch.ready_at[k] - changed[k] for k in changed]
            churn_watch.stop()
        rss = peak_rss_mb(op.pid)
    finally:
        op.terminate()
        op.wait(30)
        api.delete(Namespace, ns)
    return {"total": total, "latencies": latencies, "churn": churn, "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,500", help="comma-separated N")
    parser.add_argument("--churn-seconds", type=float, default=30.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    cluster_script = str(REPO / "hack" / "kwok-cluster")
    was_running = (
        subprocess.run(
            [cluster_script, "status", "--name", CLUSTER], capture_output=True
        ).returncode
        == 0
    )
    nodes = max(sizes) // 100 + 2  # kwok nodes take 110 pods each
    sh(cluster_script, "up", "--name", CLUSTER, "--nodes", str(nodes), timeout=600)
    kubeconfig = sh(cluster_script, "kubeconfig", "--name", CLUSTER).stdout.strip()
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
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                direct = run_direct(api, kubeconfig, n)
                op = run_operator(
                    api, n, kubeconfig, args.churn_seconds, Path(tmp) / f"operator-{n}.log"
                )
                results.append((n, direct, op))
    finally:
        if not was_running:
            sh(cluster_script, "down", "--name", CLUSTER, timeout=300)

    print(
        f"\noperator scale on kwok ({nodes} nodes), {CONCURRENCY} requests in flight for both paths\n"
    )
    print(
        f"{'N':>6} {'direct s':>9} {'operator s':>11} {'ratio':>6} {'p50 ready s':>12} {'p99 ready s':>12} "
        f"{'churn p50 s':>12} {'churn p99 s':>12} {'peak RSS MB':>12}"
    )
    for n, direct, op in results:
        churn = op["churn"] or [float("nan")]
        print(
            f"{n:>6} {direct:>9.1f} {op['total']:>11.1f} {op['total'] / direct:>6.2f} "
            f"{statistics.median(op['latencies']):>12.2f} {percentile(op['latencies'], 0.99):>12.2f} "
            f"{statistics.median(churn):>12.2f} {percentile(churn, 0.99):>12.2f} {op['rss_mb']:>12.0f}"
        )
    print(
        "\ntargets (for the record): ratio <= 1.3 at N=500; churn p99 < 5 s at 10 changes/s; RSS < 150 MB at N=1000"
    )
    print(json.dumps({str(n): {"direct_s": d, "operator_s": o["total"]} for n, d, o in results}))


if __name__ == "__main__":
    main()
