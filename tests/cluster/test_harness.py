"""Proof that the cluster tier talks to a real control plane.

Each test exercises a piece that a mock would not have: the scheduler and the
Deployment/ReplicaSet controllers, the EndpointSlice controller, the HPA
controller reading the aggregated metrics API, Pod Security admission, and RBAC
with impersonation. Every wait is a bounded poll; nothing asserts on wall time.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any, cast

# The `kubectl` fixture (tests/cluster/conftest.py).
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Pods never run on kwok nodes, so the image is never pulled; a name that
# cannot resolve makes that explicit.
IMAGE = "registry.invalid/bhiv/harness:never-pulled"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# Enough for a loaded 2-core machine; a healthy cluster converges in seconds.
ROLLOUT_TIMEOUT = 120
# metrics-server scrapes every 15 s and needs two scrapes for a CPU rate; the
# HPA controller then syncs every 15 s.
METRICS_TIMEOUT = 240


def restricted_container(name: str = "app", **extra: Any) -> dict[str, Any]:
    """A container that satisfies the `restricted` Pod Security profile."""
    return {
        "name": name,
        "image": IMAGE,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
    }


def deployment(
    name: str,
    replicas: int,
    *,
    pod_annotations: dict[str, str] | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations or {}},
                "spec": {"containers": [container or restricted_container()]},
            },
        },
    }


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    manifest = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def test_cluster_reports_its_version(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]["gitVersion"]
    # A build without version ldflags says v0.0.0, which breaks Helm's
    # kubeVersion checks and every "minimum Kubernetes" gate.
    assert server.startswith("v1."), server
    assert server != "v0.0.0"


def test_deployment_becomes_available(
    kube_cluster: Any,
    kube_api_client: Any,
    namespace: str,
    eventually: Callable[..., Any],
) -> None:
    from lightkube import Client
    from lightkube.models.apps_v1 import Deployment as DeploymentModel
    from lightkube.resources.apps_v1 import Deployment
    from lightkube.resources.core_v1 import Node, Pod

    api: Client = kube_api_client
    api.create(cast(Deployment, Deployment.from_dict(deployment("web", 2))), namespace=namespace)

    def available() -> DeploymentModel | None:
        dep = api.get(Deployment, "web", namespace=namespace)
        status = dep.status
        conditions = {c.type: c.status for c in (status.conditions if status else None) or []}
        if status and status.availableReplicas == 2 and conditions.get("Available") == "True":
            return dep
        return None

    eventually(
        available, timeout=ROLLOUT_TIMEOUT, what="Deployment web to be Available with 2 replicas"
    )

    pods = list(api.list(Pod, namespace=namespace, labels={"app.kubernetes.io/name": "web"}))
    assert len(pods) == 2
    nodes = {n.metadata.name: n for n in api.list(Node) if n.metadata}
    for pod in pods:
        assert pod.metadata and pod.spec and pod.status
        assert pod.spec.nodeName in nodes, f"{pod.metadata.name} is not scheduled"
        if kube_cluster.is_kwok:
            # The scheduler placed it on a node that kwok simulates.
            node_meta = nodes[pod.spec.nodeName].metadata
            annotations = (node_meta.annotations if node_meta else None) or {}
            assert annotations.get(KWOK_NODE_ANNOTATION) == "fake", pod.spec.nodeName
        assert pod.status.phase == "Running"
        ready = {c.type: c.status for c in pod.status.conditions or []}
        assert ready.get("Ready") == "True", pod.status.conditions
        assert pod.status.podIP, f"{pod.metadata.name} has no IP"


def test_service_gets_endpoints(
    kubectl: Kubectl, namespace: str, eventually: Callable[..., Any]
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app.kubernetes.io/name": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8000}],
        },
    }
    apply(kubectl, namespace, deployment("web", 2), service)

    def ready_endpoints() -> list[dict[str, Any]] | None:
        slices = get_json(
            kubectl, "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=web"
        )["items"]
        endpoints = [
            ep
            for s in slices
            for ep in s.get("endpoints") or []
            if ep.get("conditions", {}).get("ready")
        ]
        return endpoints if len(endpoints) == 2 else None

    endpoints = eventually(
        ready_endpoints, timeout=ROLLOUT_TIMEOUT, what="2 ready endpoints for Service web"
    )
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app.kubernetes.io/name=web")["items"]
    pod_ips = {p["status"]["podIP"] for p in pods}
    assert {ep["addresses"][0] for ep in endpoints} == pod_ips
    assert all(ep["targetRef"]["kind"] == "Pod" for ep in endpoints)


def test_hpa_reports_cpu_utilisation_from_emulated_metrics(
    kubectl: Kubectl, namespace: str, eventually: Callable[..., Any]
) -> None:
    # kwok's usage-from-annotation emulation reports this CPU for each pod;
    # against a 100m request that is 50 % utilisation.
    container = restricted_container(resources={"requests": {"cpu": "100m", "memory": "32Mi"}})
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    apply(
        kubectl,
        namespace,
        deployment(
            "web", 2, pod_annotations={"kwok.x-k8s.io/usage-cpu": "50m"}, container=container
        ),
        hpa,
    )

    def current_utilisation() -> int | None:
        status = get_json(kubectl, "hpa", "web", "-n", namespace).get("status", {})
        for metric in status.get("currentMetrics") or []:
            current = metric.get("resource", {}).get("current", {})
            if metric.get("type") == "Resource" and current.get("averageUtilization") is not None:
                return int(current["averageUtilization"]) or None
        return None

    utilisation = eventually(
        current_utilisation,
        timeout=METRICS_TIMEOUT,
        interval=3,
        what="the HPA to report a current CPU utilisation",
    )
    # 50m used of 100m requested; the rate comes from two scrapes, so allow slack.
    assert 30 <= utilisation <= 70, utilisation
    table = kubectl("get", "hpa", "web", "-n", namespace).stdout
    assert "<unknown>" not in table, table


def test_restricted_namespace_rejects_privileged_pod(kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")

    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [{"name": "app", "image": IMAGE, "securityContext": {"privileged": True}}]
        },
    }
    rejected = kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(privileged), check=False
    )
    assert rejected.returncode != 0, rejected.stdout
    assert "violates PodSecurity" in rejected.stderr, rejected.stderr
    assert "privileged" in rejected.stderr, rejected.stderr

    # The same namespace admits a pod that meets the profile, so the refusal
    # above is the policy at work and not a broken admission chain.
    compliant = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "compliant"},
        "spec": {"containers": [restricted_container()]},
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(compliant))
    assert kubectl("get", "pod", "privileged", "-n", namespace, check=False).returncode != 0


def test_service_account_needs_rbac_grant(
    kubectl: Kubectl, namespace: str, eventually: Callable[..., Any]
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=mode=test")
    as_reader = ("--as", f"system:serviceaccount:{namespace}:reader")

    denied = kubectl("get", "configmap", "settings", "-n", namespace, *as_reader, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr or "forbidden" in denied.stderr, denied.stderr

    kubectl(
        "create", "role", "configmap-reader", "-n", namespace,
        "--verb=get,list", "--resource=configmaps",
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "reader-reads-configmaps", "-n", namespace,
        "--role=configmap-reader", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip

    def reader_can_get() -> bool:
        got = kubectl("get", "configmap", "settings", "-n", namespace, *as_reader, check=False)
        return got.returncode == 0

    # RBAC is served from an informer cache; the grant shows up within moments.
    eventually(
        reader_can_get,
        timeout=30,
        what="the RoleBinding to let the ServiceAccount read the ConfigMap",
    )
    data = json.loads(
        kubectl("get", "configmap", "settings", "-n", namespace, "-o", "json", *as_reader).stdout
    )
    assert data["data"] == {"mode": "test"}

    # The grant is exactly what the Role says: reading, not deleting.
    delete = kubectl("delete", "configmap", "settings", "-n", namespace, *as_reader, check=False)
    assert delete.returncode != 0
    assert "forbidden" in delete.stderr.lower(), delete.stderr
