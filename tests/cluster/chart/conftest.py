"""Fixtures for the Helm chart's checks: helm and kubeconform from hack/k8s-tools,
JSON schemas for kubeconform made from the cluster's own OpenAPI document and the
BhivModule CRD, and the operator run locally (kwok runs no containers)."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import REPO_ROOT, KubeCluster, Kubectl
from tests.support.commands import run_tool

CHART = REPO_ROOT / "charts" / "bhiv"
MANIFESTS = REPO_ROOT / "manifests"
VALUES_FULL = Path(__file__).resolve().parent / "values-full.yaml"
CRD_FILE = MANIFESTS / "crd" / "bhiv.io_bhivmodules.yaml"


@dataclass(frozen=True)
class Tool:
    path: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(
            [str(self.path), *args],
            env=self.env,
            timeout=timeout,
            check=check,
            shown_as=self.path.name,
        )


@pytest.fixture(scope="session")
def helm(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Tool:
    """helm talking to the cluster under test, with its own cache/config/data dirs."""
    path = kube_cluster.bin_dir / "helm"
    if not os.access(path, os.X_OK):
        pytest.skip(f"no helm in {kube_cluster.bin_dir}; build it with `hack/k8s-tools`")
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "KUBECONFIG": str(kube_cluster.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Tool(path, env)


@pytest.fixture(scope="session")
def kubeconform(kube_cluster: KubeCluster) -> Tool:
    path = kube_cluster.bin_dir / "kubeconform"
    if not os.access(path, os.X_OK):
        pytest.skip(f"no kubeconform in {kube_cluster.bin_dir}; build it with `hack/k8s-tools`")
    return Tool(path, dict(os.environ))


# --- JSON schemas for kubeconform -------------------------------------------
#
# No schema registry is reachable here, and the cluster under test is the best
# reference anyway: its /openapi/v2 document describes exactly the API it serves.
# Each kind becomes `<kind>-<group prefix>-<version>.json` (kubeconform's
# `{{ .ResourceKind }}{{ .KindSuffix }}` naming), a standalone JSON schema with
# all definitions embedded; strict: every object with fixed properties rejects
# unknown ones, as `kubeconform -strict` expects of its schemas.


def _int_or_string(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _int_or_string(v) for k, v in node.items()}
        if out.get("format") == "int-or-string" or out.get("x-kubernetes-int-or-string") is True:
            for key in ("type", "format"):
                out.pop(key, None)
            out.setdefault("anyOf", [{"type": "string"}, {"type": "integer"}])
        return out
    if isinstance(node, list):
        return [_int_or_string(v) for v in node]
    return node


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        # Only schema nodes (type: object), never a `properties` map that
        # happens to name a field "properties" (JSONSchemaProps does).
        if (
            out.get("type") == "object"
            and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and out.get("x-kubernetes-preserve-unknown-fields") is not True
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _kind_suffix(group: str, version: str) -> str:
    return f"-{group.split('.')[0]}-{version}" if group else f"-{version}"


def write_cluster_schemas(openapi: dict[str, Any], crds: list[dict[str, Any]], out: Path) -> Path:
    definitions = _strict(_int_or_string(openapi["definitions"]))
    # Quantities are strings or numbers in YAML.
    quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if quantity in definitions:
        definitions[quantity] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or ():
            schema = {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": definitions,
                "allOf": [{"$ref": f"#/definitions/{name}"}],
            }
            file = out / f"{gvk['kind'].lower()}{_kind_suffix(gvk['group'], gvk['version'])}.json"
            file.write_text(json.dumps(schema))
    # Each CRD's own schema, its metadata checked as the API server checks it.
    for crd in crds:
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["metadata"] = {
                "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            }
            props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
            props["kind"] = {"type": "string", "enum": [kind]}
            schema = _strict(_int_or_string(schema))
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            schema["definitions"] = definitions
            (out / f"{kind.lower()}{_kind_suffix(group, version['name'])}.json").write_text(
                json.dumps(schema)
            )
    return out


@pytest.fixture(scope="session")
def kube_schemas(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    openapi = json.loads(kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout)
    crds = [
        doc
        for path in sorted((CHART / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    return write_cluster_schemas(openapi, crds, tmp_path_factory.mktemp("kubeconform-schemas"))


# --- the operator, run locally ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalOperator:
    """The chart's operator container, run here: the exact args of the Deployment
    Helm installed (`$(POD_NAMESPACE)` expanded), authenticated as the chart's
    operator ServiceAccount, so the chart's Role or ClusterRole is what it runs with.
    Only the liveness and metrics ports are moved to free local ones."""

    args: list[str]
    kubeconfig: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalOperator:
        liveness, metrics = _free_port(), _free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        ports = ["--liveness-port", str(liveness), "--metrics-port", str(metrics)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bhiv", *self.args, *ports],
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited; its log:\n{self.log()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", liveness), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the operator did not start; its log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def local_operator(tmp_path: Path) -> Iterator[Callable[..., LocalOperator]]:
    started: list[LocalOperator] = []

    def start(args: list[str], kubeconfig: Path) -> LocalOperator:
        op = LocalOperator(args, kubeconfig, tmp_path / f"operator-{len(started)}.log").start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()


@pytest.fixture(scope="session")
def chart_crds(kubectl: Kubectl) -> None:
    """The chart's CRDs, applied as docs/helm.md tells users to before an upgrade."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bhivmodules.bhiv.io",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )


def deployed_operator_args(
    kubectl: Kubectl, namespace: str, name: str = "bhiv-operator"
) -> list[str]:
    """The operator container's args as installed, ``$(POD_NAMESPACE)`` expanded."""
    deployment = json.loads(
        kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert [
        e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if e["name"] == "POD_NAMESPACE"
    ] == ["metadata.namespace"]
    return [a.replace("$(POD_NAMESPACE)", namespace) for a in container["args"]]


def render(
    helm: Tool, *args: str, namespace: str = "bhiv", release: str = "bhiv"
) -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
