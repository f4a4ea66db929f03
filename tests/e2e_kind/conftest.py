"""End to end on a real cluster: the image, the Helm chart, an ingress controller,
and real REST calls through the Ingress. Every test here is marked ``kind``.

By default it makes its own kind cluster (needs Docker that can run privileged
containers, the ``kind`` binary, and internet for the node image and the
ingress-nginx manifest), and deletes it afterwards. It is cluster-agnostic
where that is cheap; the environment chooses:

=============================  ============================================================
``BHIV_E2E_KUBECONFIG``        use this cluster instead of creating a kind one (never deleted)
``BHIV_E2E_CLUSTER_NAME``      kind cluster name (default ``bhiv-e2e``)
``BHIV_E2E_IMAGE``             image to install (default ``bhiv-core:e2e``)
``BHIV_E2E_BUILD``             ``0``: do not ``docker build`` it (default: build from ./Dockerfile)
``BHIV_E2E_IMAGE_LOADER``      command making the image available to the nodes, ``{image}`` and
                               ``{cluster}`` substituted (default with kind:
                               ``kind load docker-image {image} --name {cluster}``; with
                               ``BHIV_E2E_KUBECONFIG``: none, the nodes pull it)
``BHIV_E2E_INGRESS_MANIFEST``  ingress controller manifest (default: ingress-nginx for kind,
                               pinned); ``none``: the cluster has one already
``BHIV_E2E_INGRESS_CLASS``     IngressClass (default ``nginx``)
``BHIV_E2E_INGRESS_URL``       where the ingress answers (default with kind: the host port
                               mapped to the node's port 80)
``BHIV_E2E_KEEP``              ``1``: keep the kind cluster and the release for debugging
=============================  ============================================================
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bhiv"
E2E_DIR = Path(__file__).resolve().parent
INGRESS_NGINX_KIND = (
    "https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.12.1/"
    "deploy/static/provider/kind/deploy.yaml"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.kind)


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        bin_dir = subprocess.run(
            [str(REPO / "hack" / "k8s-tools"), "--print-bin-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    candidate = Path(bin_dir) / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def _run(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return result


def _docker_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command"
    info = subprocess.run(
        [docker, "info", "--format", "{{json .SecurityOptions}} {{.OperatingSystem}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if info.returncode != 0:
        return f"docker does not answer ({info.stderr.strip()[:200]})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class E2ECluster:
    kubeconfig: Path
    kubectl: str
    helm: str
    image: str
    ingress_url: str
    ingress_class: str
    namespace: str
    api_key: str
    env: dict[str, str]

    def k(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run(self.kubectl, *args, env=self.env, **kw)  # type: ignore[arg-type]

    def h(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run(self.helm, *args, env=self.env, **kw)  # type: ignore[arg-type]


def _kind_config(host_port: int) -> str:
    return f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    kubeadmConfigPatches:
      - |
        kind: InitConfiguration
        nodeRegistration:
          kubeletExtraArgs:
            node-labels: "ingress-ready=true"
    extraPortMappings:
      - containerPort: 80
        hostPort: {host_port}
        listenAddress: 127.0.0.1
        protocol: TCP
"""


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    external = os.environ.get("BHIV_E2E_KUBECONFIG")
    keep = os.environ.get("BHIV_E2E_KEEP") == "1"
    kubectl, helm = _tool("kubectl"), _tool("helm")
    if not kubectl or not helm:
        pytest.skip("kind e2e: kubectl and helm are needed (PATH or `hack/k8s-tools`)")
    kind = None
    if not external:
        kind = _tool("kind")
        if kind is None:
            pytest.skip(
                "kind e2e: no `kind` binary (install kind v0.32+, e.g. "
                "`go install sigs.k8s.io/kind@v0.32.0`), "
                "or point BHIV_E2E_KUBECONFIG at a cluster"
            )
        problem = _docker_problem()
        if problem:
            pytest.skip(f"kind e2e: needs Docker able to run privileged containers: {problem}")

    work = tmp_path_factory.mktemp("e2e")
    cluster_name = os.environ.get("BHIV_E2E_CLUSTER_NAME", "bhiv-e2e")
    image = os.environ.get("BHIV_E2E_IMAGE", "bhiv-core:e2e")
    kubeconfig = Path(external) if external else work / "kubeconfig"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(work / "helm-cache"),
        "HELM_CONFIG_HOME": str(work / "helm-config"),
        "HELM_DATA_HOME": str(work / "helm-data"),
    }
    created = False
    cluster: E2ECluster | None = None
    try:
        if os.environ.get("BHIV_E2E_BUILD", "1") != "0":
            _run("docker", "build", "-t", image, str(REPO), timeout=1800)
        ingress_url = os.environ.get("BHIV_E2E_INGRESS_URL", "")
        if not external:
            host_port = _free_port()
            (work / "kind.yaml").write_text(_kind_config(host_port))
            _run(
                kind,
                "create",
                "cluster",
                "--name",
                cluster_name,
                "--config",
                str(work / "kind.yaml"),
                "--kubeconfig",
                str(kubeconfig),
                "--wait",
                "120s",
                env=env,
                timeout=900,
            )
            created = True
            ingress_url = ingress_url or f"http://127.0.0.1:{host_port}"
        if not ingress_url:
            pytest.fail("BHIV_E2E_INGRESS_URL is needed with BHIV_E2E_KUBECONFIG", pytrace=False)
        loader = os.environ.get(
            "BHIV_E2E_IMAGE_LOADER",
            "" if external else f"{kind} load docker-image {{image}} --name {{cluster}}",
        )
        if loader:
            _run("sh", "-c", loader.format(image=image, cluster=cluster_name), env=env, timeout=900)

        cluster = E2ECluster(
            kubeconfig=kubeconfig,
            kubectl=kubectl,
            helm=helm,
            image=image,
            ingress_url=ingress_url.rstrip("/"),
            ingress_class=os.environ.get("BHIV_E2E_INGRESS_CLASS", "nginx"),
            namespace=f"bhiv-e2e-{uuid.uuid4().hex[:6]}",
            api_key="bhiv_" + secrets.token_urlsafe(32),
            env=env,
        )
        manifest = os.environ.get("BHIV_E2E_INGRESS_MANIFEST", INGRESS_NGINX_KIND)
        if manifest != "none":
            cluster.k("apply", "-f", manifest)
            cluster.k(
                "wait",
                "--namespace",
                "ingress-nginx",
                "--for=condition=ready",
                "pod",
                "--selector=app.kubernetes.io/component=controller",
                "--timeout=300s",
                timeout=330,
            )

        repository, _, tag = image.rpartition(":")
        api_key_hash = hashlib.sha256(cluster.api_key.encode()).hexdigest()
        cluster.h(
            "install",
            "bhiv",
            str(CHART),
            "--namespace",
            cluster.namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            "15m",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            "ingress.enabled=true",
            "--set",
            f"ingress.className={cluster.ingress_class}",
            "--set",
            "auth.apiKeys[0].name=e2e",
            "--set",
            "auth.apiKeys[0].role=editor",
            "--set",
            f"auth.apiKeys[0].sha256={api_key_hash}",
            "--set",
            "hooks.timeoutSeconds=600",
            timeout=1000,
        )
        _wait_for_gateway(cluster.ingress_url)
        yield cluster
    finally:
        if not keep:
            if created and kind:
                subprocess.run(
                    [
                        kind,
                        "delete",
                        "cluster",
                        "--name",
                        cluster_name,
                        "--kubeconfig",
                        str(kubeconfig),
                    ],
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
            elif cluster is not None:
                # Someone else's cluster: remove what this run made, the kept JWT Secret included.
                for args in (
                    [helm, "uninstall", "bhiv", "--namespace", cluster.namespace, "--wait"],
                    [kubectl, "delete", "namespace", cluster.namespace, "--wait=false"],
                ):
                    subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)


def _wait_for_gateway(url: str, timeout: float = 300) -> None:
    """The Ingress answers with the gateway's /health (not ingress-nginx's 404/503)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200 and r.headers.get("content-type", "").startswith(
                "application/json"
            ):
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(2)
    pytest.fail(f"the gateway never answered through the Ingress at {url}: {last}", pytrace=False)
