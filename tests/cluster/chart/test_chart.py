"""The Helm chart: lint, render + kubeconform, install/upgrade/test/uninstall on the
local cluster, Pod Security `restricted` admission.

kwok runs no containers, so the operator runs locally (as `bhiv operator`, with a
token of the chart's operator ServiceAccount, i.e. the chart's Role) while the
chart's operator Deployment stays at one replica (kwok marks its pod Ready, which
is what `helm install --wait` waits for). Hook Job and test pods are marked
complete by kwok; the command they run is tested on its own in test_wait_modules.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.chart.conftest import (
    CHART,
    CRD_FILE,
    MANIFESTS,
    VALUES_FULL,
    Tool,
    deployed_operator_args,
    render,
)
from tests.cluster.conftest import Kubectl
from tests.support.kube import service_account_kubeconfig

RELEASE = "bhiv"
DEFAULT_MODULES = {
    "integrations",
    "llm-query",
    "logistics",
    "crm",
    "agent-orchestration",
    "gateway",
}
KUBE_VERSION = "1.36.3"


def test_chart_crds_are_the_manifests_crds() -> None:
    for name in ("bhiv.io_bhivmodules.yaml", "kopf-peering.yaml"):
        assert (CHART / "crds" / name).read_bytes() == (MANIFESTS / "crd" / name).read_bytes(), (
            f"charts/bhiv/crds/{name} differs from manifests/crd/{name}: copy it over"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [
        "bhiv.io_bhivmodules.yaml",
        "kopf-peering.yaml",
    ]


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_FULL)]], ids=["default", "full"])
def test_lint_strict(helm: Tool, values: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "servics.gateway.enabled=false"], "servics"),
        (["--set", "services.gateway.replica=2"], "replica"),
        (["--set", "ingress.classname=nginx"], "classname"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "database.urls.gatway=postgresql://x"], "gatway"),
        (["--set", "postgresql.persistence.sise=1Gi"], "sise"),
        (["--set", "postgresql.persistence.size=lots"], "size"),
        (["--set", "services.crm.database.secretRef.nam=x"], "nam"),
        # The gateway keeps no data (the catalog says so): no database to point at.
        (["--set", "services.gateway.database.secretRef.name=x"], "/services/gateway/database"),
        (["--set", "credentials.existingsecret=x"], "existingsecret"),
    ],
)
def test_values_schema_rejects_typos(helm: Tool, args: list[str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_FULL)]], ids=["default", "full"])
def test_template_passes_kubeconform(
    helm: Tool, kubeconform: Tool, kube_schemas: Path, values: list[str], tmp_path: Path
) -> None:
    rendered = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        "bhiv",
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
        *values,
    ).stdout
    (tmp_path / "rendered.yaml").write_text(rendered)
    result = kubeconform(
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        KUBE_VERSION,
        "-schema-location",
        str(kube_schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
        str(tmp_path / "rendered.yaml"),
        check=False,
    )
    report = json.loads(result.stdout)
    problems = [r for r in report["resources"] if r["status"] != "statusValid"]
    assert result.returncode == 0 and not problems, json.dumps(problems or report, indent=1)[:4000]
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"BhivModule", "Deployment", "Job", "Secret", "Pod", "CustomResourceDefinition"} <= kinds
    assert report["summary"]["valid"] == len([d for d in yaml.safe_load_all(rendered) if d])


def test_kubeconform_schema_catches_bad_module(
    kubeconform: Tool, kube_schemas: Path, tmp_path: Path
) -> None:
    """The CRD schema is really in use: a wrong field in a BhivModule fails."""
    bad = {
        "apiVersion": "bhiv.io/v1alpha1",
        "kind": "BhivModule",
        "metadata": {"name": "x"},
        "spec": {"service": "logistics", "image": "i", "replica": 2},
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = kubeconform(
        "-strict",
        "-schema-location",
        str(kube_schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
        str(tmp_path / "bad.yaml"),
        check=False,
    )
    assert result.returncode != 0 and "replica" in result.stdout + result.stderr


def test_startup_order_as_depends_on(helm: Tool) -> None:
    docs = render(helm)
    deps = {
        d["metadata"]["name"]: d["spec"].get("dependsOn") for d in docs if d["kind"] == "BhivModule"
    }
    assert deps == {
        "integrations": None,
        "llm-query": ["integrations"],
        "logistics": ["llm-query"],
        "crm": ["llm-query"],
        "agent-orchestration": ["logistics", "crm"],
        "gateway": ["agent-orchestration"],
    }
    # A disabled service drops out of the chain: its dependents wait for the stage before it.
    docs = render(
        helm,
        "--set",
        "services.agent-orchestration.enabled=false",
        "--set",
        "services.llm-query.enabled=false",
    )
    deps = {
        d["metadata"]["name"]: d["spec"].get("dependsOn") for d in docs if d["kind"] == "BhivModule"
    }
    assert deps == {
        "integrations": None,
        "logistics": ["integrations"],
        "crm": ["integrations"],
        "gateway": ["logistics", "crm"],
    }
    assert [
        j["spec"]["template"]["spec"]["containers"][0]["args"][5:] for j in _wait_jobs(docs)
    ] == [["integrations"], ["logistics", "crm"], ["gateway"]]
    full = render(helm, "-f", str(VALUES_FULL))
    deps = {
        d["metadata"]["name"]: d["spec"].get("dependsOn") for d in full if d["kind"] == "BhivModule"
    }
    assert deps["agent-orchestration"] == ["logistics", "crm"] and deps["gateway"] == [
        "agent-orchestration"
    ]
    jobs = _wait_jobs(full)
    stages = [
        (
            j["metadata"]["annotations"]["helm.sh/hook-weight"],
            j["spec"]["template"]["spec"]["containers"][0]["args"][5:],
        )
        for j in jobs
    ]
    assert stages == [
        ("1", ["integrations"]),
        ("2", ["llm-query"]),
        ("3", ["logistics", "crm"]),
        ("4", ["agent-orchestration"]),
        ("5", ["gateway"]),
    ]
    # Every module gets the JWT secret.
    for module in (d for d in full if d["kind"] == "BhivModule"):
        assert module["spec"]["envFrom"][0] == {"secretRef": {"name": "bhiv-jwt"}}


def _wait_jobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == "Job"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "startup-hooks"
    ]


def test_cluster_wide_mode_uses_cluster_scoped_rbac(helm: Tool) -> None:
    docs = render(helm, "--set", "operator.clusterWide=true")
    kinds = {d["kind"] for d in docs}
    assert {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"} <= kinds
    assert "KopfPeering" not in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    namespaced = render(helm)
    assert not {"ClusterRole", "ClusterRoleBinding"} & {d["kind"] for d in namespaced}


def test_pod_controls_reach_the_modules(helm: Tool) -> None:
    docs = render(
        helm,
        "--set",
        "imagePullSecrets[0].name=registry",
        "--set",
        "services.crm.nodeSelector.pool=apps",
        "--set",
        "services.crm.priorityClassName=business",
        "--set",
        "services.crm.podLabels.team=sales",
        "--set",
        "services.crm.securityContext.runAsUser=20000",
        "--set",
        "services.logistics.imagePullSecrets[0].name=own-registry",
    )
    modules = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "BhivModule"}
    crm, logistics, gateway = modules["crm"], modules["logistics"], modules["gateway"]
    assert crm["imagePullSecrets"] == gateway["imagePullSecrets"] == [{"name": "registry"}]
    assert logistics["imagePullSecrets"] == [{"name": "own-registry"}]
    assert crm["nodeSelector"] == {"pool": "apps"} and crm["priorityClassName"] == "business"
    assert crm["podLabels"] == {"team": "sales"}
    assert crm["securityContext"] == {"runAsUser": 20000}
    for unset in ("nodeSelector", "securityContext", "topologySpreadConstraints", "affinity"):
        assert unset not in logistics, unset


def test_allowed_images_become_operator_arguments(helm: Tool) -> None:
    def operator_args(*values: str) -> list[str]:
        docs = render(helm, *values)
        return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
            "containers"
        ][0]["args"]

    args = operator_args(
        "--set", "operator.allowedImages={registry.example.com/bhiv/,ghcr.io/acme/core}"
    )
    assert args[args.index("--allowed-image") :][:4] == [
        "--allowed-image",
        "registry.example.com/bhiv/",
        "--allowed-image",
        "ghcr.io/acme/core",
    ]
    assert "--allowed-image" not in operator_args()


# --- on the cluster ----------------------------------------------------------


def _modules(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl("get", "bhivmodules", "-n", namespace, "-o", "json").stdout)["items"]
    return {m["metadata"]["name"]: m for m in items}


def _ready(module: dict[str, Any]) -> bool:
    conds = (module.get("status") or {}).get("conditions") or []
    gen = module["metadata"].get("generation")
    return any(
        c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration", gen) == gen
        for c in conds
    )


def _restricted(kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )


def _images(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    items = json.loads(kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)["items"]
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in items
    }


def _hook_phases(helm: Tool, namespace: str) -> dict[str, str]:
    status = json.loads(helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
    return {
        h["name"]: h.get("last_run", {}).get("phase", "")
        for h in status.get("hooks") or []
        if "post-install" in h.get("events", []) or "post-upgrade" in h.get("events", [])
    }


_POD_SUCCEEDED = {
    "status": {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [
            {
                "name": "test",
                "image": "bhiv-core:1.0.0",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }
        ],
    }
}


def _json(kubectl: Kubectl, *args: str) -> dict[str, Any] | None:
    result = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _leftovers(kubectl: Kubectl, namespace: str) -> list[str]:
    kinds = kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = kubectl(
        "get", ",".join(kinds), "-n", namespace, "-o", "name", "--ignore-not-found"
    ).stdout.split()
    expected_by_k8s = {"serviceaccount/default", "configmap/kube-root-ca.crt"}
    return sorted(set(out) - expected_by_k8s)


def test_install_upgrade_test_uninstall(
    helm: Tool,
    kubectl: Kubectl,
    namespace: str,
    chart_crds: None,
    local_operator: Any,
    eventually: Any,
    tmp_path: Path,
) -> None:
    _restricted(kubectl, namespace)  # every pod below is admitted under `restricted`
    # No provisioner here: a volume made beforehand, bound to the PostgreSQL claim.
    _volume_for(kubectl, namespace, "data-bhiv-postgresql-0")
    # 1. install: resources Ready (--wait), then the post-install hooks (the
    # provisioning Job, then the stage Jobs).
    installed = helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "image.tag=1.0.0",
        timeout=400,
    )
    notes = " ".join(installed.stdout.split())
    assert (
        "Databases: integrations, llm-query, logistics, crm, agent-orchestration on the bundled"
        " PostgreSQL" in notes
    ), notes
    assert (
        "the Secrets bhiv-jwt, bhiv-credentials, bhiv-postgresql and PostgreSQL's volume" in notes
    )
    assert "WARNING" not in notes
    sa = service_account_kubeconfig(
        kubectl, namespace, "bhiv-operator", tmp_path / "operator.kubeconfig"
    )
    args = deployed_operator_args(kubectl, namespace)
    assert args == [
        "operator",
        "--namespace",
        namespace,
        "--peering",
        "bhiv-operator",
        "--cluster-domain",
        "cluster.local",
    ]
    operator = local_operator(args, sa)
    modules = eventually(
        lambda: (m := _modules(kubectl, namespace)) and all(_ready(x) for x in m.values()) and m,
        timeout=120,
        what="every BhivModule Ready",
    )
    assert set(modules) == DEFAULT_MODULES
    phases = _hook_phases(helm, namespace)
    # The databases provisioned, then five stages: each Job ran and completed.
    assert phases == {
        "bhiv-provision-databases": "Succeeded",
        **{f"bhiv-wait-stage-{n}": "Succeeded" for n in range(1, 6)},
    }, phases
    images = _images(kubectl, namespace)
    assert images == {name: "bhiv-core:1.0.0" for name in [*DEFAULT_MODULES, "bhiv-operator"]}, (
        images
    )
    jwt = kubectl(
        "get", "secret", "bhiv-jwt", "-n", namespace, "-o", "jsonpath={.data.BHIV_JWT_SECRET}"
    ).stdout
    assert len(jwt) > 40
    kept = _kept_secrets(kubectl, namespace)
    assert set(kept) == set(KEPT_SECRETS) and all(kept.values())
    # helm test: kwok completes only Job pods and leaves the bare test Pod Running,
    # so the test plays its container's exit 0 through the status subresource (the
    # script itself runs for real in test_wait_modules.py::test_gateway_check_script...).
    tester = subprocess.Popen(
        [str(helm.path), "test", RELEASE, "-n", namespace, "--timeout", "2m"],
        env=helm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pod = eventually(
            lambda: _json(kubectl, "pod", "bhiv-test-gateway", "-n", namespace),
            timeout=60,
            what="the helm test pod",
        )
        assert pod["spec"]["containers"][0]["command"] == ["python3", "-c"]
        kubectl(
            "patch",
            "pod",
            "bhiv-test-gateway",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(_POD_SUCCEEDED),
        )
        out, err = tester.communicate(timeout=150)
    finally:
        if tester.poll() is None:
            tester.kill()
    assert tester.returncode == 0 and "Phase:          Succeeded" in out, out + err

    # 2. upgrade with a new tag: every Deployment's pod template rolls to it; the
    # JWT secret stays the same; the post-upgrade hooks ran again.
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "image.tag=1.0.1",
        timeout=400,
    )
    eventually(
        lambda: set(_images(kubectl, namespace).values()) == {"bhiv-core:1.0.1"},
        timeout=120,
        what="every Deployment on bhiv-core:1.0.1",
    )
    for name in [*DEFAULT_MODULES, "bhiv-operator"]:
        kubectl(
            "rollout",
            "status",
            f"deployment/{name}",
            "-n",
            namespace,
            "--timeout=120s",
            timeout=150,
        )
    eventually(
        lambda: all(_ready(x) for x in _modules(kubectl, namespace).values()),
        timeout=120,
        what="every BhivModule Ready after the upgrade",
    )
    assert (
        kubectl(
            "get", "secret", "bhiv-jwt", "-n", namespace, "-o", "jsonpath={.data.BHIV_JWT_SECRET}"
        ).stdout
        == jwt
    )
    assert _kept_secrets(kubectl, namespace) == kept  # every password and key reused
    status = json.loads(helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"
    assert set(_hook_phases(helm, namespace).values()) == {"Succeeded"}

    # The local operator goes first: in the cluster its pod goes with its Deployment,
    # here it would lose its ServiceAccount's token mid-work and log 401s.
    operator.stop()
    errors = [
        line
        for line in operator.log().splitlines()
        if '"severity": "error"' in line and "onflict" not in line
    ]
    assert not errors, "\n".join(errors[-5:])

    # 3. uninstall: only the kept Secrets and PostgreSQL's volume claim are left in
    # the namespace (and the CRDs); the modules' Deployments and Services go with
    # them (owner references).
    helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "2m", timeout=200)
    expected = sorted(
        ["persistentvolumeclaim/data-bhiv-postgresql-0"] + [f"secret/{n}" for n in KEPT_SECRETS]
    )
    left = eventually(
        lambda: (x := _leftovers(kubectl, namespace)) == expected and x,
        timeout=120,
        what=f"only {expected} left",
    )
    assert left == expected
    kubectl("get", "crd", "bhivmodules.bhiv.io")

    # 4. reinstall: the kept secrets are adopted by value (lookup): tokens stay valid,
    # the database passwords still open the kept volume's data, credentials decrypt.
    helm(
        "install", RELEASE, str(CHART), "-n", namespace, "--set", "hooks.enabled=false", timeout=200
    )
    assert _kept_secrets(kubectl, namespace) == kept
    helm("uninstall", RELEASE, "-n", namespace, "--wait", timeout=200)


# Secrets the chart generates once and keeps on uninstall.
KEPT_SECRETS = ("bhiv-credentials", "bhiv-jwt", "bhiv-postgresql")


def _kept_secrets(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, str]]:
    return {
        name: (_json(kubectl, "secret", name, "-n", namespace) or {}).get("data") or {}
        for name in KEPT_SECRETS
    }


def _volume_for(kubectl: Kubectl, namespace: str, claim: str) -> None:
    """A PersistentVolume reserved for ``claim`` (kwok runs no provisioner)."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}"[:63]},
        "spec": {
            "capacity": {"storage": "8Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "",
            "hostPath": {"path": f"/var/tmp/{namespace}-{claim}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(volume))


def test_rendered_pods_admitted_under_restricted(
    helm: Tool, kubectl: Kubectl, namespace: str, chart_crds: None
) -> None:
    """Every pod the full-featured render makes (operator, hook Jobs, test pod) is
    admitted by Pod Security `restricted` (server-side dry run of each pod)."""
    _restricted(kubectl, namespace)
    docs = render(helm, "-f", str(VALUES_FULL), namespace=namespace)
    pods = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = doc["spec"]["template"]
            # A StatefulSet's pods get a volume per claim template from its controller.
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                template["spec"].setdefault("volumes", []).append(
                    {"name": claim["metadata"]["name"], "emptyDir": {}}
                )
            pods.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": doc["metadata"]["name"],
                        "namespace": namespace,
                        "labels": template["metadata"]["labels"],
                    },
                    "spec": template["spec"],
                }
            )
        elif doc["kind"] == "Pod":
            pods.append(doc)
    # The operator, PostgreSQL, the provisioning hook, five stage hooks, the test pod.
    assert len(pods) == 1 + 1 + 1 + 5 + 1
    for account in (d for d in docs if d["kind"] == "ServiceAccount"):
        kubectl("apply", "-f", "-", input=json.dumps(account))
    for pod in pods:
        pod["spec"].pop(
            "priorityClassName", None
        )  # system-cluster-critical is limited to kube-system
        result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert result.returncode == 0, result.stderr
        assert "violate" not in result.stderr, result.stderr
    # And a pod that is not restricted-compliant is refused here, so the check bites.
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "restricted" in refused.stderr


def test_crd_upgrade_path_documented() -> None:
    text = (CHART / "README.md").read_text()
    assert "kubectl apply --server-side" in text and "charts/bhiv/crds/" in text
    assert yaml.safe_load(CRD_FILE.read_text())["metadata"]["name"] == "bhivmodules.bhiv.io"


def test_cluster_wide_install(
    helm: Tool,
    kubectl: Kubectl,
    namespace: str,
    chart_crds: None,
    local_operator: Any,
    eventually: Any,
    tmp_path: Path,
) -> None:
    """operator.clusterWide=true: the operator runs with the chart's ClusterRole (and
    ClusterKopfPeering) only, watching every namespace, and still brings the modules up."""
    _restricted(kubectl, namespace)
    helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "operator.clusterWide=true",
        "--set",
        "hooks.enabled=false",
        # The bundled database is tested in namespaced mode; SQLite needs no volume here.
        "--set",
        "postgresql.enabled=false",
        timeout=400,
    )
    peering = f"{namespace}-bhiv-operator"
    kubectl("get", "clusterkopfpeering", peering)
    kubectl("get", "clusterrole", peering)
    sa = service_account_kubeconfig(
        kubectl, namespace, "bhiv-operator", tmp_path / "operator.kubeconfig"
    )
    args = deployed_operator_args(kubectl, namespace)
    assert args[:4] == ["operator", "--all-namespaces", "--peering", peering]
    operator = local_operator(args, sa)
    eventually(
        lambda: (
            (m := _modules(kubectl, namespace))
            and len(m) == len(DEFAULT_MODULES)
            and all(map(_ready, m.values()))
        ),
        timeout=120,
        what="every BhivModule Ready (cluster-wide operator)",
    )
    operator.stop()
    errors = [
        line
        for line in operator.log().splitlines()
        if '"severity": "error"' in line and "onflict" not in line
    ]
    assert not errors, "\n".join(errors[-5:])
    helm("uninstall", RELEASE, "-n", namespace, "--wait", timeout=200)
    # Cluster-scoped objects go too (CRDs apart).
    assert (
        kubectl(
            "get",
            "clusterrole,clusterrolebinding,clusterkopfpeering",
            peering,
            "--ignore-not-found",
            "-o",
            "name",
        ).stdout.strip()
        == ""
    )


def test_full_render_accepted_by_the_api_server(
    helm: Tool, kubectl: Kubectl, namespace: str, chart_crds: None
) -> None:
    """Server-side dry run of everything the full-featured values render (the
    BhivModules' CEL rules, the Ingress, RBAC, Secrets), beyond what kubeconform sees."""
    docs = render(helm, "-f", str(VALUES_FULL), namespace=namespace)
    result = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input="\n---\n".join(json.dumps(d) for d in docs),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == len(docs)
    # And the API server does refuse a module that breaks the CRD's rules.
    bad = next(d for d in docs if d["kind"] == "BhivModule" and d["metadata"]["name"] == "crm")
    bad["spec"]["dependsOn"] = ["crm"]
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "must not name the module itself" in refused.stderr


def test_ingress_trusted_proxies_reach_the_gateway_alone(helm: Tool) -> None:
    def env(docs: list[dict[str, Any]]) -> dict[str, list[Any] | None]:
        return {
            d["metadata"]["name"]: d["spec"].get("env") for d in docs if d["kind"] == "BhivModule"
        }

    assert all(e is None for e in env(render(helm)).values())
    rendered = env(
        render(
            helm,
            "--set",
            "ingress.trustedProxies={10.244.0.0/16,10.0.0.5}",
            "--set-json",
            'services.gateway.env=[{"name":"BHIV_LOG_LEVEL","value":"DEBUG"}]',
        )
    )
    assert rendered.pop("gateway") == [
        {"name": "BHIV_LOG_LEVEL", "value": "DEBUG"},
        {"name": "BHIV_TRUSTED_PROXIES", "value": "10.244.0.0/16,10.0.0.5"},
    ]
    assert all(e is None for e in rendered.values())
    refused = helm(
        "template", RELEASE, str(CHART), "--set", "ingress.trustedProxies={everyone}", check=False
    )
    assert refused.returncode != 0 and "trustedProxies" in refused.stderr
