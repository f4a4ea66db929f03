"""The operator's own API requests, counted by its metric
bhiv_operator_api_requests_total{verb,resource}: a steady-state resync of every
module sends none (children and modules are read from the watches' cache, and an
unchanged child is not applied again)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.operator.conftest import OperatorProcess, condition, get_json, wait_for

Kubectl = Callable[..., Any]
N = 20
RESYNC_SECONDS = 2
READS = ("get", "list")
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def scrape(operator: OperatorProcess) -> dict[str, Any]:
    """Requests by (verb, resource), resyncs so far, successful reconciles, queue depth."""
    requests: Counter[tuple[str, str]] = Counter()
    resyncs = reconciles = depth = 0.0
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == "bhiv_operator_api_requests_total":
                requests[(sample.labels["verb"], sample.labels["resource"])] = int(sample.value)
            elif sample.name == "bhiv_operator_resyncs_total":
                resyncs = sample.value
            elif sample.name == "bhiv_operator_reconciles_total" and sample.labels == {
                "result": "ok"
            }:
                reconciles = sample.value
            elif sample.name == "bhiv_operator_queue_depth":
                depth = sample.value
    return {"requests": requests, "resyncs": resyncs, "reconciles": reconciles, "depth": depth}


def after_resyncs(operator: OperatorProcess, count: int) -> dict[str, Any]:
    """The metrics once ``count`` more resyncs have started and the queue is empty again."""
    start = scrape(operator)["resyncs"]

    def done() -> dict[str, Any] | None:
        now = scrape(operator)
        return now if now["resyncs"] >= start + count and now["depth"] == 0 else None

    return wait_for(done, f"{count} resyncs", timeout=60 + count * RESYNC_SECONDS * 5)


def verbs(delta: Counter[tuple[str, str]], wanted: tuple[str, ...]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in delta.items() if key[0] in wanted and n}


def test_a_steady_state_resync_sends_no_request(
    kubectl: Kubectl, namespace: str, operator_rbac: Path, tmp_path: Path, modules: Any
) -> None:
    operator = OperatorProcess(
        namespace,
        operator_rbac,
        tmp_path / "operator.log",
        args=["--resync-seconds", str(RESYNC_SECONDS)],
    ).start()
    try:
        # Every kind of child: claims (the default), NetworkPolicies, and HPAs with
        # PDBs at a fixed size (so no scaling moves the Deployments meanwhile).
        for i in range(N):
            spec: dict[str, Any] = {}
            if i % 4 == 1:
                spec = {"networkPolicy": {"enabled": True}}
            elif i % 4 == 2:
                spec = {
                    "database": {"secretRef": {"name": "db"}},
                    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 2},
                }
            modules(f"m{i}", **spec)
        for i in range(N):
            # Ready at its final size: an HPA first scales its Deployment from 1 to 2.
            size = "2/2" if i % 4 == 2 else "1/1"
            wait_for(
                lambda n=f"m{i}", size=size: (
                    (body := get_json(kubectl, "bm", n, "-n", namespace))
                    and condition(body, "Ready").get("status") == "True"
                    and body["status"]["replicasReady"] == size
                ),
                f"m{i} Ready with {size} pods",
                timeout=120,
            )
        made = scrape(operator)["requests"]
        # The counter saw the operator's applies and status writes.
        assert made[("patch", "deployments")] >= N
        assert made[("patch", "services")] >= N
        assert made[("patch", "bhivmodules/status")] >= N

        # Settled (the last status writes and watch events are through), then measured
        # over two resyncs, in which every module is reconciled at least twice.
        before = after_resyncs(operator, 2)
        after = after_resyncs(operator, 2)
        assert after["reconciles"] - before["reconciles"] >= 2 * N
        delta = after["requests"] - before["requests"]
        assert verbs(delta, WRITES) == {}
        assert verbs(delta, READS) == {}
    finally:
        operator.stop()
    errors = [line for line in operator.log().splitlines() if '"severity": "error"' in line]
    assert not [e for e in errors if "will retry" not in e and "onflict" not in e], errors[-5:]
