"""Pods that really run: the project image on a real kubelet + containerd."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_urlsafe

import pytest

from tests.support.realnode import NODE_IP, RealNode, eventually

LOGISTICS_PORT = 8001


def _deployment(namespace: str, image: str) -> dict:
    labels = {"app": "logistics"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "logistics", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "logistics",
                            "image": image,
                            # Only what was loaded into the node: never a pull.
                            "imagePullPolicy": "Never",
                            "args": ["serve", "logistics"],
                            # In a cluster a service refuses to make its own signing
                            # secret; this throwaway one is the test's, never a real one.
                            "env": [{"name": "BHIV_JWT_SECRET", "value": token_urlsafe(32)}],
                            "ports": [{"containerPort": LOGISTICS_PORT, "name": "http"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 2,
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def _service(namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "logistics", "namespace": namespace},
        "spec": {
            "selector": {"app": "logistics"},
            "ports": [{"port": 80, "targetPort": "http", "name": "http"}],
        },
    }


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local addresses only
        return resp.status, json.loads(resp.read())


def test_node_is_real(real_node: RealNode) -> None:
    node = real_node.get_json("node", "bhiv-realnode")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP


@dataclass(frozen=True)
class Deployed:
    namespace: str
    pod: dict
    cluster_ip: str


@pytest.fixture(scope="module")
def logistics(real_node: RealNode, node_image: str) -> Iterator[Deployed]:
    """`bhiv serve logistics` as a 1-replica Deployment behind a ClusterIP Service."""
    namespace = f"t-realnode-{os.getpid() % 100000}"
    real_node.kubectl("create", "namespace", namespace)
    try:
        eventually(
            lambda: (
                real_node.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode
                == 0
            ),
            timeout=60,
            what=f"the default ServiceAccount in {namespace}",
        )
        manifests = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [_deployment(namespace, node_image), _service(namespace)],
        }
        real_node.kubectl("apply", "-f", "-", input=json.dumps(manifests))
        rollout = real_node.kubectl(
            "rollout",
            "status",
            "deployment/logistics",
            "-n",
            namespace,
            "--timeout=180s",
            check=False,
        )
        if rollout.returncode != 0:
            pods = real_node.kubectl(
                "get", "pods", "-n", namespace, "-o", "wide", check=False
            ).stdout
            events = real_node.kubectl("get", "events", "-n", namespace, check=False).stdout
            raise AssertionError(f"rollout failed: {rollout.stderr}\n{pods}\n{events}")
        pod = real_node.get_json("pods", "-n", namespace, "-l", "app=logistics")["items"][0]
        cluster_ip = real_node.get_json("service", "logistics", "-n", namespace)["spec"][
            "clusterIP"
        ]
        yield Deployed(namespace=namespace, pod=pod, cluster_ip=cluster_ip)
    finally:
        real_node.kubectl(
            "delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False
        )


def test_logistics_pod_serves_health(real_node: RealNode, logistics: Deployed) -> None:
    pod = logistics.pod
    assert pod["status"]["phase"] == "Running"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["containerID"].startswith("containerd://")
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("10.244.0."), pod_ip

    # A real process on this host, in the pod's cgroup, running the service.
    container_id = status["containerID"].removeprefix("containerd://")
    procs = [
        p
        for p in Path("/sys/fs/cgroup/pids/kubepods").rglob("cgroup.procs")
        if container_id in str(p)
    ]
    assert procs, f"no cgroup for container {container_id}"
    pids = procs[0].read_text().split()
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in pids]
    assert any(b"serve logistics" in c for c in cmdlines), cmdlines

    # From the host: the pod IP (bridge), then the Service's ClusterIP (kube-proxy).
    code, body = _get(f"http://{pod_ip}:{LOGISTICS_PORT}/health")
    assert code == 200, body
    code, body = eventually(
        lambda: _get(f"http://{logistics.cluster_ip}/health"),
        timeout=30,
        what=f"the Service {logistics.cluster_ip}:80 answering through kube-proxy",
    )
    assert code == 200, body

    # The API server reaches the kubelet (logs go API server -> kubelet -> containerd).
    logs = real_node.kubectl("logs", "deployment/logistics", "-n", logistics.namespace).stdout
    assert "/health" in logs or "uvicorn" in logs.lower(), logs[-2000:]


# Run inside the pod (kubectl exec: API server -> kubelet -> containerd's stream server).
_IN_POD_PROBE = """
import json, socket, ssl, urllib.request
out = {n: socket.gethostbyname(n) for n in ("logistics", "kubernetes.default.svc.cluster.local")}
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with urllib.request.urlopen("https://kubernetes.default.svc/version", context=ctx, timeout=5) as r:
    out["version"] = json.loads(r.read())["gitVersion"]
with urllib.request.urlopen("http://logistics/health", timeout=5) as r:
    out["health"] = r.status
print(json.dumps(out))
"""


def test_pod_uses_cluster_dns_and_services(real_node: RealNode, logistics: Deployed) -> None:
    result = real_node.kubectl(
        "exec", "-n", logistics.namespace, "deployment/logistics", "--",
        "python3", "-c", _IN_POD_PROBE,
    )  # fmt: skip
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # CoreDNS (a pod) answers for Services; kube-proxy routes to them from a pod.
    assert seen["logistics"] == logistics.cluster_ip
    assert seen["kubernetes.default.svc.cluster.local"] == "10.96.0.1"
    # The `kubernetes` Service leads back to the API server on the node address.
    assert seen["version"] == "v1.36.3"
    assert seen["health"] == 200


# An address routed out of a non-bridge interface that still never leaves this machine:
# bhivnode1 is the far end of the veth pair that carries the node address.
_TRAP_IP = "198.51.100.99"
_TRAP_IF = "bhivnode1"
_FW_RULE = [
    "-t", "mangle", "FORWARD", "-s", "10.244.0.0/24", "!", "-o", "bhivbr0",
    "-m", "comment", "--comment", "bhiv-realnode: pod traffic never leaves the machine",
    "-j", "DROP",
]  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)  # noqa: S603, S607


def _drops() -> int:
    out = subprocess.run(  # noqa: S603
        ["iptables", "-w", "-t", "mangle", "-L", "FORWARD", "-v", "-x", "-n"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [ln for ln in out.splitlines() if "pod traffic never leaves" in ln]
    assert len(lines) == 1, out
    return int(lines[0].split()[0])


def test_pod_traffic_is_dropped_before_leaving_the_bridge(
    real_node: RealNode, logistics: Deployed
) -> None:
    # The guard rule is in place (exact match: -C fails otherwise).
    subprocess.run(["iptables", "-w", "-t", "mangle", "-C", *_FW_RULE[2:]], check=True)  # noqa: S603, S607
    tx = Path(f"/sys/class/net/{_TRAP_IF}/statistics/tx_packets")
    _ip("route", "add", f"{_TRAP_IP}/32", "dev", _TRAP_IF)
    try:
        before_drops, before_tx = _drops(), int(tx.read_text())
        probe = (
            "import socket; s = socket.socket(); s.settimeout(2)\n"
            f"try: s.connect(('{_TRAP_IP}', 80)); print('connected')\n"
            "except OSError as e: print(type(e).__name__)"
        )
        out = real_node.kubectl(
            "exec", "-n", logistics.namespace, "deployment/logistics", "--", "python3", "-c", probe
        ).stdout.strip()
        assert out in {"TimeoutError", "timeout"}, out
        assert _drops() > before_drops, "the guard rule did not count the pod's packets"
        # Nothing went out of the non-bridge interface (not even an ARP request).
        assert int(tx.read_text()) == before_tx
    finally:
        _ip("route", "del", f"{_TRAP_IP}/32", "dev", _TRAP_IF)


def _get_with_host(url: str, host: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Host": host})  # noqa: S310 - local address
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        return resp.status, json.loads(resp.read())


def test_ingress_through_traefik(real_node: RealNode, logistics: Deployed) -> None:
    host = "logistics.realnode.test"
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "logistics", "namespace": logistics.namespace},
        "spec": {
            "ingressClassName": "traefik",
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {"name": "logistics", "port": {"name": "http"}}
                                },
                            }
                        ]
                    },
                }
            ],
        },
    }
    real_node.kubectl("apply", "-f", "-", input=json.dumps(ingress))
    # Traefik on the host, on the node address, port 80.
    code, body = eventually(
        lambda: _get_with_host(f"http://{NODE_IP}/health", host),
        timeout=60,
        what=f"GET http://{NODE_IP}/health (Host: {host}) through Traefik",
    )
    assert code == 200, body
    # Traefik publishes the node address in the Ingress status.
    status = eventually(
        lambda: (
            real_node.get_json("ingress", "logistics", "-n", logistics.namespace)["status"]
            .get("loadBalancer", {})
            .get("ingress")
        ),
        timeout=30,
        what="the Ingress status",
    )
    assert status[0]["ip"] == NODE_IP
