"""The NetworkPolicies the operator derives from the dependency graph, enforced by the
cluster's network plugin (on the real node, kube-network-policies; on kind, kindnet):
a connection is either let through or its first packet is dropped, so "not reached"
here is a connect that times out.

The release's defaults: each module depends on the stage before it
(integrations → llm-query → logistics, crm → agent-orchestration → gateway), and the
catalog lets integrations into logistics and crm. So logistics answers the gateway,
agent-orchestration and integrations, and no other pod; the monitoring peer (a
namespace label, set in the release's values by conftest.py) reaches every module's
port, from which it scrapes /metrics.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bhiv import catalog
from tests.e2e.conftest import MONITORING_LABEL, E2ECluster

# Prints the HTTP status, or the reason no answer came (a dropped SYN times out).
PROBE = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception as exc:
    print(f"no answer: {exc!r}")
"""
REACHED_TIMEOUT = 15.0  # the first packet of a connection is judged in user space
BLOCKED_TIMEOUT = 4.0
# What logistics lets in under the release's defaults (the module docstring says why).
LOGISTICS_CALLERS = ("gateway", "agent-orchestration", "integrations")


def _url(e2e: E2ECluster, module: str, path: str) -> str:
    port = catalog.get(module).port
    return f"http://{module}.{e2e.namespace}.svc.cluster.local:{port}{path}"


def _probe(e2e: E2ECluster, namespace: str, target: str, url: str, timeout: float) -> str:
    """GET ``url`` from inside ``target`` (a pod, or deploy/NAME) in ``namespace``."""
    out = e2e.k(
        "exec", target, "-n", namespace, "--", "python3", "-c", PROBE, url, str(timeout),
        timeout=timeout + 60,
    )  # fmt: skip
    return out.stdout.strip()


def _reached(answer: str) -> bool:
    return answer.isdigit()


@contextmanager
def _pod_in_new_namespace(e2e: E2ECluster, labels: dict[str, str]) -> Iterator[str]:
    """A namespace of its own (with ``labels``) holding one idle pod of the release's
    image; yields the namespace; both are deleted afterwards."""
    namespace = f"bhiv-e2e-np-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": labels},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "client", "namespace": namespace},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 0,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "client",
                            "image": e2e.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "infinity"],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        ],
    }
    try:
        subprocess.run(  # noqa: S603
            [e2e.kubectl, "apply", "-f", "-"], input=json.dumps(manifest), env=e2e.env,
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        e2e.k("wait", "--for=condition=Ready", "pod/client", "-n", namespace, "--timeout=180s",
              timeout=200)  # fmt: skip
        yield namespace
    finally:
        e2e.k("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def stranger(e2e: E2ECluster) -> Iterator[str]:
    """The namespace of a pod that has nothing to do with the release."""
    with _pod_in_new_namespace(e2e, {}) as namespace:
        yield namespace


@pytest.fixture(scope="module")
def scraper(e2e: E2ECluster) -> Iterator[str]:
    """The namespace of a pod matching the release's monitoring selector."""
    with _pod_in_new_namespace(e2e, {MONITORING_LABEL: "true"}) as namespace:
        yield namespace


def test_logistics_answers_only_the_modules_that_depend_on_it(
    e2e: E2ECluster, stranger: str
) -> None:
    health = _url(e2e, "logistics", "/health")
    answers = {}
    for caller in (*LOGISTICS_CALLERS, "crm", "llm-query"):
        timeout = REACHED_TIMEOUT if caller in LOGISTICS_CALLERS else BLOCKED_TIMEOUT
        answers[caller] = _probe(e2e, e2e.namespace, f"deploy/{caller}", health, timeout)
    answers["another namespace"] = _probe(e2e, stranger, "client", health, BLOCKED_TIMEOUT)
    reached = {caller for caller, answer in answers.items() if _reached(answer)}
    assert reached == set(LOGISTICS_CALLERS), answers
    # Refused by the policy, not by the module: the same pods reach what they depend on.
    assert _reached(
        _probe(e2e, e2e.namespace, "deploy/crm", _url(e2e, "llm-query", "/health"), REACHED_TIMEOUT)
    )


def test_the_gateway_answers_its_namespace_and_the_ingress_controller(
    e2e: E2ECluster, stranger: str
) -> None:
    """The gateway's default peers: every pod of its namespace and, for the ingress
    controller, any namespace (the chart's `networkPolicy.ingressController`). The
    Ingress path itself (the controller on the node) is every other e2e test."""
    health = _url(e2e, "gateway", "/health")
    assert _reached(_probe(e2e, e2e.namespace, "deploy/llm-query", health, REACHED_TIMEOUT))
    assert _reached(_probe(e2e, stranger, "client", health, REACHED_TIMEOUT))


def test_metrics_are_scraped_from_the_monitoring_selector_only(
    e2e: E2ECluster, scraper: str, stranger: str
) -> None:
    for module in ("logistics", "llm-query", "integrations"):
        metrics = _url(e2e, module, "/metrics")
        scraped = _probe(e2e, scraper, "client", metrics, REACHED_TIMEOUT)
        assert scraped == "200", f"{module}: {scraped}"
        refused = _probe(e2e, stranger, "client", metrics, BLOCKED_TIMEOUT)
        assert not _reached(refused), f"{module} answered a pod outside the selector: {refused}"
