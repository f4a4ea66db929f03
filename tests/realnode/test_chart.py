"""The Helm chart on the real node: the operator and every service in real pods,
`helm test` really executing, and REST calls through Traefik (the Ingress).

A first step towards issue 11's cluster-agnostic e2e suite; it runs here only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.realnode.conftest import NODE_IP, REPO_ROOT, RealNode, eventually

CHART = REPO_ROOT / "charts" / "bhiv"
RELEASE = "bhiv"
SERVICES = ("agent-orchestration", "crm", "gateway", "integrations", "llm-query", "logistics")
GATEWAY = f"http://{NODE_IP}"


@dataclass(frozen=True)
class Release:
    namespace: str
    helm: list[str]
    env: dict[str, str]
    token: str

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the cached helm, fixed arguments
            [*self.helm, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )


def _call(path: str, token: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{GATEWAY}{path}", headers=headers)  # noqa: S310 - node address
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:500]


@pytest.fixture(scope="module")
def release(
    real_node: RealNode, node_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    if not (CHART / "Chart.yaml").is_file():
        pytest.skip(f"no chart at {CHART}")
    repository, _, tag = node_image.rpartition(":")
    namespace = f"t-chart-{os.getpid() % 100000}"
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "KUBECONFIG": str(real_node.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECACHEDIR": str(home / "kube-cache"),
    }
    helm = [str(real_node.bin_dir / "helm")]
    started = time.monotonic()
    install = subprocess.run(  # noqa: S603
        [
            *helm, "install", RELEASE, str(CHART), "-n", namespace, "--create-namespace",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            # Only what was loaded into the node: never a pull.
            "--set", "image.pullPolicy=Never",
            "--set", "ingress.enabled=true", "--set", "ingress.className=traefik",
            "--wait", "--timeout", "8m",
        ],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    try:
        if install.returncode != 0:
            pods = real_node.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
            pytest.fail(f"helm install failed:\n{install.stderr[-3000:]}\n{pods.stdout}")
        print(f"helm install --wait: {time.monotonic() - started:.0f}s")  # noqa: T201
        secret = real_node.get_json("secret", f"{RELEASE}-jwt", "-n", namespace)
        jwt_secret = base64.b64decode(secret["data"]["BHIV_JWT_SECRET"]).decode()
        minted = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bhiv", "token", "--role", "editor"],
            capture_output=True, text=True, timeout=60, check=True,
            env={**os.environ, "BHIV_JWT_SECRET": jwt_secret},
        )  # fmt: skip
        yield Release(namespace, helm, env, minted.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(  # noqa: S603
            [*helm, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        real_node.kubectl(
            "delete", "namespace", namespace, "--wait=true", "--timeout=180s", check=False
        )


def test_every_module_ready_with_running_pods(real_node: RealNode, release: Release) -> None:
    modules = real_node.get_json("bhivmodules", "-n", release.namespace)["items"]
    ready = {
        m["metadata"]["name"]: next(
            (c["status"] for c in m["status"].get("conditions", []) if c["type"] == "Ready"), None
        )
        for m in modules
    }
    assert ready == dict.fromkeys(SERVICES, "True"), ready
    pods = real_node.get_json("pods", "-n", release.namespace)["items"]
    running = [p for p in pods if p["status"]["phase"] == "Running"]
    # One pod per service plus the operator, each a real containerd container.
    assert len(running) == len(SERVICES) + 1, [p["metadata"]["name"] for p in pods]
    for pod in running:
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"], pod["metadata"]["name"]
            assert status["containerID"].startswith("containerd://")


def test_helm_test_pod_really_runs(release: Release) -> None:
    result = release.run("test", RELEASE, "-n", release.namespace, "--timeout", "3m")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def test_gateway_and_services_through_traefik(release: Release) -> None:
    code, body = eventually(
        lambda: (lambda r: r if r[0] == 200 else None)(_call("/health")),
        timeout=60,
        what=f"{GATEWAY}/health through Traefik",
    )
    assert body["service"] == "gateway"
    code, body = _call("/services", release.token)
    assert code == 200, body
    status = {s["name"]: s["status"] for s in body["services"]}
    assert status == dict.fromkeys(set(SERVICES) - {"gateway"}, "up"), status
    code, body = _call("/api/logistics/inventory?limit=5", release.token)
    assert code == 200, body


def test_operator_restores_a_deleted_deployment(real_node: RealNode, release: Release) -> None:
    real_node.kubectl("delete", "deployment", "logistics", "-n", release.namespace)
    started = time.monotonic()

    def answering() -> bool:
        ready = real_node.kubectl(
            "get", "deployment", "logistics", "-n", release.namespace,
            "-o", "jsonpath={.status.readyReplicas}", check=False,
        ).stdout  # fmt: skip
        return ready == "1" and _call("/api/logistics/inventory?limit=5", release.token)[0] == 200

    eventually(answering, timeout=180, what="the operator to recreate logistics, answering again")
    print(f"logistics restored and answering after {time.monotonic() - started:.0f}s")  # noqa: T201


def test_uninstall_removes_the_service_pods(real_node: RealNode, release: Release) -> None:
    result = release.run("uninstall", RELEASE, "-n", release.namespace, "--wait", "--timeout", "3m")
    assert result.returncode == 0, result.stderr

    def gone() -> bool:
        pods = real_node.get_json("pods", "-n", release.namespace)["items"]
        return not pods

    eventually(gone, timeout=180, what=f"every pod in {release.namespace} gone after uninstall")
