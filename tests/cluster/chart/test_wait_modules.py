"""`bhiv wait-modules`, the command the chart's startup hooks run, on its own
against the API server (kwok only marks the hook Job pods complete).

It runs as the chart's hook ServiceAccount (the chart's own wait Role, rendered
with `helm template --show-only`), and statuses are written as an admin through
the status subresource, as the operator would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.chart.conftest import CHART, Tool
from tests.cluster.conftest import Kubectl
from tests.support.kube import service_account_kubeconfig
from tests.support.net import free_port, wait_http


@pytest.fixture
def wait_kubeconfig(
    helm: Tool, kubectl: Kubectl, namespace: str, chart_crds: None, tmp_path: Path
) -> Path:
    rbac = helm(
        "template",
        "bhiv",
        str(CHART),
        "--namespace",
        namespace,
        "--show-only",
        "templates/wait-serviceaccount.yaml",
        "--show-only",
        "templates/wait-role.yaml",
        "--show-only",
        "templates/wait-rolebinding.yaml",
    ).stdout
    kubectl("apply", "-n", namespace, "-f", "-", input=rbac)
    return service_account_kubeconfig(kubectl, namespace, "bhiv-wait", tmp_path / "wait.kubeconfig")


def _module(
    kubectl: Kubectl, namespace: str, name: str, depends_on: list[str] | None = None
) -> None:
    spec: dict[str, Any] = {"service": "logistics", "image": "bhiv-core:test"}
    if depends_on:
        spec["dependsOn"] = depends_on
    body = {
        "apiVersion": "bhiv.io/v1alpha1",
        "kind": "BhivModule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    kubectl("apply", "-f", "-", input=json.dumps(body))


def _set_ready(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    ready: bool,
    *,
    reason: str = "",
    message: str = "",
    waiting_for: list[str] | None = None,
    generation: int | None = None,
) -> None:
    body = json.loads(kubectl("get", "bhivmodule", name, "-n", namespace, "-o", "json").stdout)
    gen = body["metadata"]["generation"] if generation is None else generation
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "observedGeneration": gen,
        "waitingFor": waiting_for or [],
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": reason or ("Available" if ready else "Progressing"),
                "message": message or ("all replicas ready" if ready else "not yet"),
                "observedGeneration": gen,
                "lastTransitionTime": now,
            }
        ],
    }
    kubectl(
        "patch",
        "bhivmodule",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def _wait(kubeconfig: Path, namespace: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bhiv",
            "wait-modules",
            "--namespace",
            namespace,
            "--kubeconfig",
            str(kubeconfig),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_waits_while_not_ready_then_succeeds(
    kubectl: Kubectl, namespace: str, wait_kubeconfig: Path
) -> None:
    _module(kubectl, namespace, "logistics")
    _module(kubectl, namespace, "crm")
    _set_ready(kubectl, namespace, "logistics", True)
    _set_ready(
        kubectl, namespace, "crm", False, reason="DependenciesNotReady", waiting_for=["llm-query"]
    )
    proc = _wait(wait_kubeconfig, namespace, "--timeout", "60", "logistics", "crm")
    time.sleep(3)
    assert proc.poll() is None, (
        f"exited early: {proc.communicate()}"
    )  # crm is not Ready: still waiting
    started = time.monotonic()
    _set_ready(kubectl, namespace, "crm", True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10  # the watch saw it, no long polling interval
    assert "all Ready" in err and "waiting: crm: DependenciesNotReady" in err


def test_times_out_naming_the_stuck_module(
    kubectl: Kubectl, namespace: str, wait_kubeconfig: Path
) -> None:
    _module(kubectl, namespace, "integrations")
    _module(kubectl, namespace, "llm-query", depends_on=["integrations"])
    _set_ready(kubectl, namespace, "integrations", True)
    _set_ready(
        kubectl,
        namespace,
        "llm-query",
        False,
        reason="DependenciesNotReady",
        message="waiting for integrations",
        waiting_for=["integrations"],
    )
    started = time.monotonic()
    proc = _wait(
        wait_kubeconfig, namespace, "--timeout", "4", "integrations", "llm-query", "gateway"
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert 4 <= time.monotonic() - started < 30
    last = err.strip().splitlines()[-1]
    assert "timed out after 4s" in last
    assert "llm-query: DependenciesNotReady (waiting for integrations)" in last
    assert "gateway: NotFound" in last  # a module that does not exist is named too
    assert "integrations:" not in last.split("not Ready:")[1]  # the Ready one is not blamed


def test_stale_ready_from_an_older_generation_does_not_count(
    kubectl: Kubectl, namespace: str, wait_kubeconfig: Path
) -> None:
    _module(kubectl, namespace, "crm")
    _set_ready(kubectl, namespace, "crm", True)
    kubectl(
        "patch",
        "bhivmodule",
        "crm",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"image":"bhiv-core:new"}}',
    )
    proc = _wait(wait_kubeconfig, namespace, "--timeout", "3", "crm")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "crm: Outdated" in err, err


def test_every_module_of_the_namespace_when_none_named(
    kubectl: Kubectl, namespace: str, wait_kubeconfig: Path
) -> None:
    _module(kubectl, namespace, "a")
    _module(kubectl, namespace, "b")
    _set_ready(kubectl, namespace, "a", True)
    _set_ready(kubectl, namespace, "b", True)
    proc = _wait(wait_kubeconfig, namespace, "--timeout", "20")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_refused_without_rbac(
    kubectl: Kubectl, namespace: str, wait_kubeconfig: Path, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    nobody = service_account_kubeconfig(
        kubectl, namespace, "nobody", tmp_path / "nobody.kubeconfig"
    )
    proc = _wait(nobody, namespace, "--timeout", "5", "crm")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "403" in err, err


def test_gateway_check_script_of_helm_test(tmp_path: Path) -> None:
    """The script the `helm test` pod runs (charts/bhiv/files/check_gateway.py),
    against a real gateway with a shared JWT secret."""
    port = free_port()
    secret = "s" * 48
    env = {
        **os.environ,
        "BHIV_JWT_SECRET": secret,
        "BHIV_DATA_DIR": str(tmp_path),
        "BHIV_PORT": str(port),
        "BHIV_GATEWAY_UPSTREAMS": "{}",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "bhiv", "serve", "gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/health", timeout=60, alive=lambda: gateway.poll() is None
        )
        script = (CHART / "files" / "check_gateway.py").read_text()
        check = {
            **env,
            "GATEWAY_URL": f"http://127.0.0.1:{port}",
            "EXPECT_SERVICES": "",
            "CHECK_TIMEOUT_SECONDS": "10",
        }
        ok = subprocess.run(
            [sys.executable, "-c", script], env=check, capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0 and "gateway healthy" in ok.stdout, ok.stderr
        # A wrong secret: /services refuses the token, and the script says so.
        wrong = subprocess.run(
            [sys.executable, "-c", script],
            env={**check, "BHIV_JWT_SECRET": "x" * 48, "CHECK_TIMEOUT_SECONDS": "3"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode == 1 and "GET /services: 401" in wrong.stderr, wrong.stderr
        # A service that is expected but not routed.
        missing = subprocess.run(
            [sys.executable, "-c", script],
            env={**check, "EXPECT_SERVICES": "crm", "CHECK_TIMEOUT_SECONDS": "3"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 1 and "crm=missing" in missing.stderr, missing.stderr
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_the_rendered_stage_job_command(
    helm: Tool, kubectl: Kubectl, namespace: str, wait_kubeconfig: Path
) -> None:
    """Exactly what the chart's stage-3 hook Job runs (its container args)."""
    import yaml

    jobs = [
        doc
        for doc in yaml.safe_load_all(
            helm(
                "template",
                "bhiv",
                str(CHART),
                "--namespace",
                namespace,
                "--set",
                "hooks.timeoutSeconds=4",
                "--show-only",
                "templates/wait-jobs.yaml",
            ).stdout
        )
        if doc
    ]
    stage3 = next(j for j in jobs if j["metadata"]["name"] == "bhiv-wait-stage-3")
    assert stage3["metadata"]["annotations"]["helm.sh/hook-weight"] == "3"
    args = stage3["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["wait-modules", "--namespace", namespace, "--timeout", "4", "logistics", "crm"]
    _module(kubectl, namespace, "logistics")
    _module(kubectl, namespace, "crm")
    _set_ready(kubectl, namespace, "logistics", True)
    _set_ready(
        kubectl, namespace, "crm", False, reason="DependenciesNotReady", waiting_for=["llm-query"]
    )

    def run() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(wait_kubeconfig)}
        return subprocess.run(
            [sys.executable, "-m", "bhiv", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    stuck = run()
    assert stuck.returncode == 1 and "not Ready: crm: DependenciesNotReady" in stuck.stderr, (
        stuck.stderr
    )
    _set_ready(kubectl, namespace, "crm", True)
    done = run()
    assert done.returncode == 0, done.stderr
