"""Fixtures for the cluster tier: tests against a real Kubernetes API server.

Which cluster:

* ``BHIV_TEST_KUBECONFIG`` set: the cluster that kubeconfig points at (kind, k3d,
  a real cluster). It is used as it is and never started or stopped here.
* otherwise: a local kwok cluster (real etcd, kube-apiserver, controller manager,
  scheduler and metrics-server; simulated nodes) started with
  ``hack/kwok-cluster up`` and stopped with ``hack/kwok-cluster down`` when the
  session ends. A cluster that is already running (``hack/kwok-cluster up`` by
  hand) is reused and left running. ``BHIV_TEST_KEEP_CLUSTER=1`` keeps the one
  started here, for debugging.

The binaries come from ``hack/k8s-tools`` (a cached build from Go modules). When
they are missing the whole tier is skipped with the command that builds them;
``BHIV_TEST_BUILD_TOOLS=1`` builds them from here instead.

Every test in this directory is marked ``cluster``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
CLUSTER_TESTS_DIR = Path(__file__).resolve().parent

# What the local kwok cluster needs from hack/k8s-tools.
LOCAL_CLUSTER_BINARIES = (
    "kubectl",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kwokctl",
    "metrics-server",
)
KUBE_CACHE_DIR = (
    Path(os.environ.get("BHIV_CACHE_DIR", Path.home() / ".cache" / "bhiv")) / "kube-cache"
)
BUILD_HINT = (
    "build them with `hack/k8s-tools` (about 10 minutes cold on 2 cores, seconds once cached)"
)

T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items; mark only the ones in this tier.
    for item in items:
        if CLUSTER_TESTS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@dataclass(frozen=True)
class KubeCluster:
    """A reachable cluster: where its kubeconfig is and which tools talk to it."""

    name: str
    kubeconfig: Path
    bin_dir: Path
    # True when this session started the cluster and will stop it.
    managed: bool

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def subprocess_env(self) -> dict[str, str]:
        """Environment for any client tool (kubectl, helm, the operator) run
        against this cluster: its kubeconfig, the tools first on PATH, and
        kubectl/helm's discovery cache kept out of ~/.kube."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(KUBE_CACHE_DIR),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @property
    def is_kwok(self) -> bool:
        """The local kwok cluster (simulated nodes), as opposed to BHIV_TEST_KUBECONFIG."""
        return self.name != "external"


class KubectlError(RuntimeError):
    """A kubectl call failed; the message carries its stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        args = " ".join(result.args[3:]) if isinstance(result.args, list) else result.args
        super().__init__(
            f"kubectl {args} exited {result.returncode}:\n{result.stderr.strip() or result.stdout}"
        )


def _tools_bin_dir() -> Path:
    out = subprocess.run(
        [str(HACK_DIR / "k8s-tools"), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _missing(bin_dir: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if not os.access(bin_dir / name, os.X_OK)]


def _ensure_local_tools() -> Path:
    bin_dir = _tools_bin_dir()
    missing = _missing(bin_dir, LOCAL_CLUSTER_BINARIES)
    if missing and os.environ.get("BHIV_TEST_BUILD_TOOLS") == "1":
        build = subprocess.run(
            [str(HACK_DIR / "k8s-tools")], capture_output=True, text=True, check=False
        )
        if build.returncode != 0:
            pytest.skip(
                "cluster tier: `hack/k8s-tools` could not build the Kubernetes tools:\n"
                + "\n".join((build.stdout + build.stderr).strip().splitlines()[-15:])
            )
        missing = _missing(bin_dir, LOCAL_CLUSTER_BINARIES)
    if missing:
        pytest.skip(
            f"cluster tier: {', '.join(missing)} not found in {bin_dir}; {BUILD_HINT}, "
            "or point BHIV_TEST_KUBECONFIG at an existing cluster"
        )
    return bin_dir


def _external_cluster(kubeconfig: Path) -> KubeCluster:
    if not kubeconfig.is_file():
        pytest.fail(f"BHIV_TEST_KUBECONFIG={kubeconfig} does not exist")
    bin_dir = _tools_bin_dir()
    if _missing(bin_dir, ["kubectl"]):
        on_path = shutil.which("kubectl")
        if on_path is None:
            pytest.skip(f"cluster tier: no kubectl in {bin_dir} or on PATH; {BUILD_HINT}")
        bin_dir = Path(on_path).resolve().parent
    return KubeCluster(name="external", kubeconfig=kubeconfig, bin_dir=bin_dir, managed=False)


def _kwok_cluster(command: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK_DIR / "kwok-cluster"), command, "--name", name, *extra],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """The cluster under test (see the module docstring for which one)."""
    external = os.environ.get("BHIV_TEST_KUBECONFIG")
    if external:
        yield _external_cluster(Path(external).expanduser().resolve())
        return

    bin_dir = _ensure_local_tools()
    name = os.environ.get("BHIV_TEST_CLUSTER_NAME", "bhiv-test")
    nodes = os.environ.get("BHIV_TEST_CLUSTER_NODES", "2")
    kubeconfig = Path(_kwok_cluster("kubeconfig", name).stdout.strip())
    already_running = _kwok_cluster("status", name).returncode == 0
    keep = os.environ.get("BHIV_TEST_KEEP_CLUSTER") == "1"
    up = _kwok_cluster("up", name, "--nodes", nodes)
    if up.returncode != 0:
        if not already_running and not keep:
            # Leave no process behind; 'down' keeps the component logs.
            _kwok_cluster("down", name)
        pytest.fail(
            f"`hack/kwok-cluster up --name {name}` failed (exit {up.returncode}):\n"
            f"{up.stdout}\n{up.stderr}",
            pytrace=False,
        )
    managed = not already_running and not keep
    try:
        yield KubeCluster(name=name, kubeconfig=kubeconfig, bin_dir=bin_dir, managed=managed)
    finally:
        if managed:
            down = _kwok_cluster("down", name)
            if down.returncode != 0:
                pytest.fail(
                    f"`hack/kwok-cluster down --name {name}` failed:\n{down.stdout}\n{down.stderr}",
                    pytrace=False,
                )


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(kube_cluster: KubeCluster) -> Kubectl:
    """Run the cluster's kubectl: ``kubectl("get", "pods", "-n", ns)``.

    Returns the CompletedProcess (text). Raises KubectlError with stderr when the
    exit code is non-zero, unless ``check=False``. ``input`` is fed to stdin
    (``kubectl("apply", "-f", "-", input=yaml)``).
    """
    base = [str(kube_cluster.kubectl_path), "--kubeconfig", str(kube_cluster.kubeconfig)]
    # Never fall back to ~/.kube/config or an ambient KUBECONFIG.
    kubectl_env = kube_cluster.subprocess_env()

    def run(
        *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*base, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=kubectl_env,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    return run


@pytest.fixture(scope="session")
def kube_api_client(kube_cluster: KubeCluster) -> Iterator[Any]:
    """A synchronous ``lightkube.Client`` for the cluster under test."""
    from lightkube import Client, KubeConfig

    client = Client(KubeConfig.from_file(kube_cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 1.0,
    what: str,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s.

    The failure message says what was awaited and the last value (or exception)
    seen, which is what one needs when a controller never converges.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # reported below if it persists
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def eventually() -> Callable[..., Any]:
    """``eventually(probe, timeout=60, what="...")``: see ``wait_until``."""
    return wait_until


def _namespace_name(node_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")
    suffix = uuid.uuid4().hex[:6]
    return f"t-{slug[: 63 - 2 - 1 - len(suffix)].rstrip('-')}-{suffix}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl: Kubectl) -> Iterator[str]:
    """A fresh, uniquely named namespace for one test, deleted afterwards."""
    name = _namespace_name(request.node.name)
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "app.kubernetes.io/part-of=bhiv-tests")
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_until(
        lambda: (
            kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        timeout=60,
        what=f"ServiceAccount default in namespace {name}",
    )
    try:
        yield name
    finally:
        # Do not wait for finalization: the namespace controller finishes it.
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
