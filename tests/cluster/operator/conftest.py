"""The operator under test: run as `bhiv operator` with its own ServiceAccount's
token (the manifests' Role, not cluster-admin), one operator per test namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.kube import service_account_kubeconfig
from tests.support.net import free_port, wait_http

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"


@pytest.fixture(scope="session")
def crds(kubectl: Callable[..., Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(MANIFESTS / "crd"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bhivmodules.bhiv.io",
        "crd/kopfpeerings.kopf.dev",
    )


@dataclass
class OperatorProcess:
    namespace: str
    kubeconfig: Path
    log_path: Path
    priority: int = 0
    liveness_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    args: list[str] = field(default_factory=list)  # more `bhiv operator` options
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bhiv",
                "operator",
                "--namespace",
                self.namespace,
                "--kubeconfig",
                str(self.kubeconfig),
                "--peering",
                "bhiv-operator",
                "--priority",
                str(self.priority),
                "--listen-host",
                "127.0.0.1",
                "--liveness-port",
                str(self.liveness_port),
                "--metrics-port",
                str(self.metrics_port),
                *self.args,
            ],
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(
                f"http://127.0.0.1:{self.liveness_port}/healthz",
                timeout=60,
                alive=lambda: self.process.poll() is None,
            )
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(
                f"the operator did not start; its log:\n{self.log()[-4000:]}"
            ) from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def operator_rbac(kubectl: Callable[..., Any], namespace: str, crds: None, tmp_path: Path) -> Path:
    """The operator's ServiceAccount, Role and peering in the test namespace; its kubeconfig."""
    for name in ("serviceaccount", "role", "rolebinding", "peering"):
        kubectl("apply", "-n", namespace, "-f", str(MANIFESTS / "operator" / f"{name}.yaml"))
    return service_account_kubeconfig(
        kubectl, namespace, "bhiv-operator", tmp_path / "operator.kubeconfig"
    )


@pytest.fixture
def operator(namespace: str, operator_rbac: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(namespace, operator_rbac, tmp_path / "operator.log").start()
    try:
        yield proc
    finally:
        proc.stop()
        errors = [line for line in proc.log().splitlines() if '"severity": "error"' in line]
        # Transient API errors that Kopf retries ("will retry") and write conflicts the
        # work queue retries are expected; anything else is a bug.
        unexpected = [e for e in errors if "will retry" not in e and "onflict" not in e]
        assert not unexpected, "\n".join(unexpected[-5:])


@pytest.fixture
def modules(kubectl: Callable[..., Any], namespace: str) -> Callable[..., None]:
    """``modules(name, service=..., depends_on=[...], **spec)`` applies one BhivModule."""

    def apply(
        name: str, service: str = "logistics", depends_on: list[str] | None = None, **spec: Any
    ) -> None:
        body: dict[str, Any] = {
            "apiVersion": "bhiv.io/v1alpha1",
            "kind": "BhivModule",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"service": service, "image": "bhiv-core:test", **spec},
        }
        if depends_on is not None:
            body["spec"]["dependsOn"] = depends_on
        kubectl("apply", "-f", "-", input=json.dumps(body))

    return apply


def get_json(kubectl: Callable[..., Any], *args: str) -> dict[str, Any] | None:
    result = kubectl("get", *args, "-o", "json", "--show-managed-fields", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def present(obj: dict[str, Any] | None) -> dict[str, Any]:
    """``obj``, which the test needs to exist (a clear failure instead of a TypeError)."""
    assert obj is not None, "the object does not exist"
    return obj


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((body or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == kind:
            return cond
    return {}


def wait_for(probe: Callable[..., Any], what: str, timeout: float = 60) -> Any:
    """Call ``probe()`` until it returns something truthy (a lambda with default
    arguments binding loop variables is fine: it is called with none)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - reported if it persists
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
