"""One end-to-end suite for every real cluster: the image, the Helm chart with its
defaults (the bundled PostgreSQL, a database per service), an ingress controller, and
REST calls through the Ingress as a client makes them. Every test here is marked ``e2e``.

Where the cluster comes from is the only thing that differs between clusters; the
tests are the same. ``BHIV_E2E_CLUSTER`` chooses:

``realnode`` (default)
    the real single node of this machine (``hack/real-node``, tests/support/realnode.py):
    the image built with ``hack/build-image`` and loaded with ``hack/real-node
    load-image``; PostgreSQL from tests/support/postgres-image (the official image's
    contract, Debian's packages; the node cannot pull); volumes from the node's
    local-path provisioner; Traefik at http://198.51.100.10. Skipped, with the
    reasons, where the machine cannot run the node (not root, no veth, …).
``kind``
    a kind cluster made for the run (Docker able to run privileged containers, the
    ``kind`` binary, internet): ``docker build``, ``kind load docker-image``,
    ingress-nginx, the official PostgreSQL image. Deleted afterwards.

``BHIV_E2E_KUBECONFIG`` instead uses an existing cluster (never deleted), with:

=============================  ============================================================
``BHIV_E2E_INGRESS_URL``       where the ingress answers (required)
``BHIV_E2E_INGRESS_CLASS``     IngressClass (default ``nginx``)
``BHIV_E2E_INGRESS_MANIFEST``  an ingress controller to apply first; default ``none``
``BHIV_E2E_IMAGE_LOADER``      command making an image available to the nodes (``{image}``
                               substituted); default none: the nodes pull it
=============================  ============================================================

and for every kind of cluster: ``BHIV_E2E_IMAGE`` (default ``bhiv-core:e2e``),
``BHIV_E2E_BUILD=0`` (do not build it), ``BHIV_E2E_UPGRADE_IMAGE`` (the tag ``helm
upgrade`` moves to; default: the image re-tagged ``…-upgrade`` and loaded like the first),
``BHIV_E2E_CLUSTER_NAME`` (kind; default ``bhiv-e2e``), ``BHIV_E2E_KEEP=1`` (keep the
kind cluster and the release for debugging).

The backup test runs ``pg_dump``/``pg_restore`` from this machine through ``kubectl
port-forward``: their major version must be at least the server's. External databases
(``database.urls``) are checked by the chart tier (tests/cluster/chart).

Secrets (the API key) go to Helm in a values file, never on a command line that a
failure message would print.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bhiv import catalog
from tests.support import realnode
from tests.support.commands import run_tool
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bhiv"
E2E_DIR = Path(__file__).resolve().parent
RELEASE = "bhiv"
INGRESS_NGINX_KIND = (
    "https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.12.1/"
    "deploy/static/provider/kind/deploy.yaml"
)
# The bundled PostgreSQL's volume claim (its StatefulSet's claim template "data", pod 0).
POSTGRES_CLAIM = f"data-{RELEASE}-postgresql-0"
# For the node that cannot pull: the official image's contract, built here.
REALNODE_POSTGRES_IMAGE = "bhiv-postgres-test:15"
# The namespace label that the release's NetworkPolicies let scrape /metrics.
MONITORING_LABEL = "bhiv.io/e2e-monitoring"
# Every service with a database of its own (the gateway keeps none).
DATABASE_SERVICES = tuple(name for name in catalog.SERVICES if name != "gateway")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Bringing a cluster up, building the image and installing the chart all happen
    # in the first test's fixtures; the default per-test timeout is too short for that.
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.timeout(2400))


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    bin_dir = realnode.run_hack("k8s-tools", "--print-bin-dir").stdout.strip()
    candidate = Path(bin_dir) / name
    return str(candidate) if bin_dir and os.access(candidate, os.X_OK) else None


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_tool(args, env=env, timeout=timeout, check=check)


@dataclass
class E2ECluster:
    """A cluster ready for the release: tools, image, ingress, storage."""

    kubectl: str
    helm: str
    image: str
    ingress_url: str
    ingress_class: str
    namespace: str
    env: dict[str, str]
    # Makes an image available to the nodes; None when the nodes pull.
    load_image: Callable[[str], None] | None
    work: Path
    # The bundled PostgreSQL's image ("repository:tag"); None: the chart's (official) one.
    postgres_image: str | None = None
    # Values every later install/upgrade keeps (a test's `helm upgrade --set`).
    overrides: dict[str, Any] = field(default_factory=dict)
    api_key: str = field(default_factory=lambda: "bhiv_" + secrets.token_urlsafe(32), repr=False)

    def k(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return _run(self.kubectl, *args, env=self.env, **kw)

    def h(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return _run(self.helm, *args, env=self.env, **kw)

    def values_file(self, image: str) -> Path:
        """Every value the release needs, the secret ones included, in a 0600 file."""
        repository, _, tag = image.rpartition(":")
        values: dict[str, Any] = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
            "ingress": {"enabled": True, "className": self.ingress_class},
            "auth": {
                "apiKeys": [
                    {
                        "name": "e2e",
                        "role": "admin",
                        "sha256": hashlib.sha256(self.api_key.encode()).hexdigest(),
                    }
                ]
            },
            "hooks": {"timeoutSeconds": 600},
            # The scraper test_network_policies.py puts in a namespace with this label.
            "networkPolicy": {
                "monitoring": {"namespaceSelector": {"matchLabels": {MONITORING_LABEL: "true"}}}
            },
        }
        if self.postgres_image:
            pg_repository, _, pg_tag = self.postgres_image.rpartition(":")
            values["postgresql"] = {
                "image": {"repository": pg_repository, "tag": pg_tag, "pullPolicy": "IfNotPresent"}
            }
        values = _merged(values, self.overrides)
        path = self.work / f"values-{tag}-{len(list(self.work.glob('values-*')))}.yaml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(values))
        return path

    def upgrade_image(self) -> str:
        """A second tag for `helm upgrade`, available to the nodes like the first."""
        given = os.environ.get("BHIV_E2E_UPGRADE_IMAGE")
        if given:
            return given
        upgraded = f"{self.image}-upgrade"
        _run("docker", "tag", self.image, upgraded)
        if self.load_image:
            self.load_image(upgraded)
        return upgraded


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _helm_env(work: Path, kubeconfig: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(work / "helm-cache"),
        "HELM_CONFIG_HOME": str(work / "helm-config"),
        "HELM_DATA_HOME": str(work / "helm-data"),
        "KUBECACHEDIR": str(work / "kube-cache"),
    }


# ---- the real node of this machine --------------------------------------------------
@contextmanager
def _realnode_cluster(request: pytest.FixtureRequest, work: Path) -> Iterator[E2ECluster]:
    node: realnode.RealNode = request.getfixturevalue("real_node")
    request.getfixturevalue("docker_for_images")
    image = os.environ.get("BHIV_E2E_IMAGE", "")
    if image:
        if os.environ.get("BHIV_E2E_BUILD", "1") != "0":
            realnode.build_image(image)
        node.load_image(image)
    else:  # the image the realnode tier built and loaded (built once per session)
        image = request.getfixturevalue("node_image")
    realnode.build_postgres_image(REALNODE_POSTGRES_IMAGE)
    node.load_image(REALNODE_POSTGRES_IMAGE)
    yield E2ECluster(
        kubectl=str(node.bin_dir / "kubectl"),
        helm=str(node.bin_dir / "helm"),
        image=image,
        ingress_url=realnode.INGRESS_URL,
        ingress_class=realnode.INGRESS_CLASS,
        namespace=f"bhiv-e2e-{uuid.uuid4().hex[:6]}",
        env=_helm_env(work, node.kubeconfig),
        load_image=node.load_image,
        work=work,
        postgres_image=REALNODE_POSTGRES_IMAGE,
    )


# ---- kind, or a cluster someone else runs ------------------------------------------------
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


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(
        ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
    )  # noqa: S607
    return None if info.returncode == 0 else f"docker does not answer ({info.stderr.strip()[:200]})"


@contextmanager
def _kind_or_external_cluster(work: Path) -> Iterator[E2ECluster]:
    external = os.environ.get("BHIV_E2E_KUBECONFIG")
    keep = os.environ.get("BHIV_E2E_KEEP") == "1"
    kubectl, helm = _tool("kubectl"), _tool("helm")
    if not kubectl or not helm:
        pytest.skip("e2e: kubectl and helm are needed (PATH or `hack/k8s-tools`)")
    kind = None
    if not external:
        kind = _tool("kind")
        if kind is None:
            pytest.skip(
                "e2e on kind: no `kind` binary (install kind v0.32+, e.g. "
                "`go install sigs.k8s.io/kind@v0.32.0`), or point BHIV_E2E_KUBECONFIG at a cluster"
            )
        problem = _docker_problem()
        if problem:
            pytest.skip(f"e2e on kind: needs Docker able to run privileged containers: {problem}")
    cluster_name = os.environ.get("BHIV_E2E_CLUSTER_NAME", "bhiv-e2e")
    image = os.environ.get("BHIV_E2E_IMAGE", "bhiv-core:e2e")
    kubeconfig = Path(external) if external else work / "kubeconfig"
    env = _helm_env(work, kubeconfig)
    created = False
    cluster: E2ECluster | None = None
    try:
        if os.environ.get("BHIV_E2E_BUILD", "1") != "0":
            _run("docker", "build", "-t", image, str(REPO), timeout=1800)
        ingress_url = os.environ.get("BHIV_E2E_INGRESS_URL", "")
        if kind:
            host_port = free_port()
            (work / "kind.yaml").write_text(_kind_config(host_port))
            _run(
                kind, "create", "cluster", "--name", cluster_name,
                "--config", str(work / "kind.yaml"),
                "--kubeconfig", str(kubeconfig), "--wait", "120s", env=env, timeout=900,
            )  # fmt: skip
            created = True
            ingress_url = ingress_url or f"http://127.0.0.1:{host_port}"
        if not ingress_url:
            pytest.fail("BHIV_E2E_INGRESS_URL is needed with BHIV_E2E_KUBECONFIG", pytrace=False)
        loader = os.environ.get(
            "BHIV_E2E_IMAGE_LOADER",
            f"{kind} load docker-image {{image}} --name {cluster_name}" if kind else "",
        )

        def load_image(name: str) -> None:
            _run("sh", "-c", loader.format(image=name), env=env, timeout=900)

        cluster = E2ECluster(
            kubectl=kubectl,
            helm=helm,
            image=image,
            ingress_url=ingress_url.rstrip("/"),
            ingress_class=os.environ.get("BHIV_E2E_INGRESS_CLASS", "nginx"),
            namespace=f"bhiv-e2e-{uuid.uuid4().hex[:6]}",
            env=env,
            load_image=load_image if loader else None,
            work=work,
        )
        if cluster.load_image:
            cluster.load_image(image)
        manifest = os.environ.get(
            "BHIV_E2E_INGRESS_MANIFEST", "none" if external else INGRESS_NGINX_KIND
        )
        if manifest != "none":
            cluster.k("apply", "-f", manifest)
            cluster.k(
                "wait", "--namespace", "ingress-nginx", "--for=condition=ready", "pod",
                "--selector=app.kubernetes.io/component=controller", "--timeout=300s", timeout=330,
            )  # fmt: skip
        yield cluster
    finally:
        if created and kind and not keep:
            subprocess.run(  # noqa: S603
                [kind, "delete", "cluster", "--name", cluster_name,
                 "--kubeconfig", str(kubeconfig)],
                capture_output=True, timeout=300, check=False,
            )  # fmt: skip


@pytest.fixture(scope="session")
def e2e_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2ECluster]:
    work = tmp_path_factory.mktemp("e2e")
    work.chmod(0o700)
    kind = os.environ.get("BHIV_E2E_CLUSTER", "realnode")
    if os.environ.get("BHIV_E2E_KUBECONFIG") or kind == "kind":
        provider = _kind_or_external_cluster(work)
    elif kind == "realnode":
        provider = _realnode_cluster(request, work)
    else:
        pytest.fail(f"BHIV_E2E_CLUSTER={kind!r}: use realnode or kind", pytrace=False)
    with provider as cluster:
        yield cluster


@pytest.fixture(scope="session")
def e2e(e2e_cluster: E2ECluster) -> Iterator[E2ECluster]:
    """The chart installed (helm install --wait, hooks included) and the gateway answering."""
    cluster = e2e_cluster
    keep = os.environ.get("BHIV_E2E_KEEP") == "1"
    with ExitStack() as cleanup:
        if not keep:
            cleanup.callback(_remove_release, cluster)
        started = time.monotonic()
        cluster.h(
            "install", RELEASE, str(CHART), "--namespace", cluster.namespace, "--create-namespace",
            "-f", str(cluster.values_file(cluster.image)),
            "--wait", "--timeout", "15m", timeout=1000,
        )  # fmt: skip
        print(f"helm install --wait (hooks included): {time.monotonic() - started:.0f}s")  # noqa: T201
        wait_for_gateway(cluster.ingress_url)
        yield cluster


def _remove_release(cluster: E2ECluster) -> None:
    # Whatever the tests left: the release, then the namespace (the kept Secrets and
    # PostgreSQL's volume claim with it).
    for args in (
        [
            cluster.helm,
            "uninstall",
            RELEASE,
            "--namespace",
            cluster.namespace,
            "--wait",
            "--timeout",
            "3m",
        ],
        [
            cluster.kubectl,
            "delete",
            "namespace",
            cluster.namespace,
            "--wait=true",
            "--timeout=180s",
        ],
    ):
        subprocess.run(args, env=cluster.env, capture_output=True, timeout=300, check=False)  # noqa: S603


def wait_for_gateway(url: str, timeout: float = 300) -> None:
    """The Ingress answers with the gateway's /health (not the controller's own 404/503)."""
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
