"""The operator against a real API server, running under its own ServiceAccount."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.operator.conftest import (
    REPO,
    OperatorProcess,
    condition,
    get_json,
    present,
    wait_for,
)

Kubectl = Callable[..., Any]
# The CEL rule's message (manifests/crd): what to do instead of several pods on SQLite.
ONE_POD_ON_SQLITE = "spec.replicas > 1 and spec.autoscaling need a database"
# Several pods need a shared database (the Secret need not exist: kwok runs no pods).
ON_A_DATABASE: dict[str, Any] = {"database": {"secretRef": {"name": "shop-db"}}}


def ready(kubectl: Kubectl, ns: str, name: str) -> bool:
    return condition(get_json(kubectl, "bm", name, "-n", ns), "Ready").get("status") == "True"


def deployment(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    return get_json(kubectl, "deployment", name, "-n", ns)


class TestValidation:
    """The API server itself rejects bad specs, with messages a person can act on."""

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            (
                {"service": "crm", "image": "x", "dependsOn": ["a", "a"]},
                "spec.dependsOn lists a module more than once",
            ),
            (
                {"service": "crm", "image": "x", "dependsOn": ["bad"]},
                "spec.dependsOn must not name the module itself",
            ),
            (
                {
                    "service": "crm",
                    "image": "x",
                    "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
                },
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ),
            ({"service": "nope", "image": "x"}, 'spec.service: Unsupported value: "nope"'),
            ({"service": "crm", "image": "x", "port": 70000}, "spec.port"),
            ({"service": "crm", "image": "x", "replicas": -1}, "spec.replicas"),
            ({"service": "crm"}, "spec.image: Required value"),
            ({"service": "crm", "image": "x", "replicas": 2}, ONE_POD_ON_SQLITE),
            ({"service": "crm", "image": "x", "autoscaling": {"enabled": True}}, ONE_POD_ON_SQLITE),
            (
                {"service": "crm", "image": "x", "replicas": 3, "storage": {"ephemeral": False}},
                ONE_POD_ON_SQLITE,
            ),
            ({"service": "crm", "image": "x", "database": {}, "replicas": 2}, ONE_POD_ON_SQLITE),
            ({"service": "crm", "image": "x", "storage": {"size": "lots"}}, "spec.storage.size"),
            # Pod controls: the restricted profile cannot be left, the selector not taken.
            (
                {"service": "crm", "image": "x", "securityContext": {"privileged": True}},
                "spec.securityContext.privileged must be false",
            ),
            (
                {"service": "crm", "image": "x", "securityContext": {"runAsNonRoot": False}},
                "spec.securityContext.runAsNonRoot must be true",
            ),
            (
                {"service": "crm", "image": "x", "securityContext": {"runAsUser": 0}},
                "spec.securityContext.runAsUser",
            ),
            (
                {
                    "service": "crm",
                    "image": "x",
                    "securityContext": {"allowPrivilegeEscalation": True},
                },
                "spec.securityContext.allowPrivilegeEscalation must be false",
            ),
            (
                {
                    "service": "crm",
                    "image": "x",
                    "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                },
                "capabilities.add may only name NET_BIND_SERVICE",
            ),
            (
                {
                    "service": "crm",
                    "image": "x",
                    "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                },
                "seccompProfile.type must be RuntimeDefault or Localhost",
            ),
            (
                {"service": "crm", "image": "x", "podLabels": {"app.kubernetes.io/instance": "x"}},
                "spec.podLabels must not set app.kubernetes.io/name or",
            ),
            (
                {"service": "crm", "image": "x", "imagePullSecrets": [{}]},
                "spec.imagePullSecrets[0].name: Required value",
            ),
        ],
    )
    def test_bad_specs_are_rejected(
        self, kubectl: Kubectl, namespace: str, crds: None, spec: dict, message: str
    ) -> None:
        body = {
            "apiVersion": "bhiv.io/v1alpha1",
            "kind": "BhivModule",
            "metadata": {"name": "bad"},
            "spec": spec,
        }
        result = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert kubectl("get", "bm", "-n", namespace, "-o", "name").stdout.strip() == ""

    @pytest.mark.parametrize(
        "spec",
        [
            {
                "service": "crm",
                "image": "x",
                "replicas": 3,
                "database": {"secretRef": {"name": "d"}},
            },
            {
                "service": "crm",
                "image": "x",
                "autoscaling": {"enabled": True},
                "storage": {"ephemeral": True},
            },
            {"service": "gateway", "image": "x", "replicas": 2},
            {"service": "crm", "image": "x", "replicas": 0},
        ],
        ids=["database", "ephemeral-opt-out", "gateway", "scaled-to-zero"],
    )
    def test_several_pods_with_a_database_or_the_opt_out(
        self, kubectl: Kubectl, namespace: str, crds: None, spec: dict
    ) -> None:
        body = {
            "apiVersion": "bhiv.io/v1alpha1",
            "kind": "BhivModule",
            "metadata": {"name": "ok"},
            "spec": spec,
        }
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))

    def test_scaling_up_a_module_on_sqlite_is_refused(
        self, kubectl: Kubectl, namespace: str, crds: None, modules: Any
    ) -> None:
        # The scale subresource (kubectl scale, an HPA aimed at the module) goes
        # through the same validation as an edit of the spec.
        modules("one", service="crm")
        result = kubectl("scale", "bm/one", "-n", namespace, "--replicas=2", check=False)
        assert result.returncode != 0 and ONE_POD_ON_SQLITE in result.stderr, result.stderr
        body = get_json(kubectl, "bm", "one", "-n", namespace)
        assert body is not None and body["spec"]["replicas"] == 1

    def test_explain_documents_every_field(self, kubectl: Kubectl, crds: None) -> None:
        # The API server publishes a new CRD's OpenAPI a moment after it is Established.
        out = wait_for(
            lambda: kubectl("explain", "bm.spec.autoscaling").stdout, "the CRD's OpenAPI"
        )
        assert "HorizontalPodAutoscaler" in out and "minReplicas" in out and "Fewest pods" in out

    def test_defaults(self, kubectl: Kubectl, namespace: str, crds: None, modules: Any) -> None:
        modules("x", service="crm")
        spec = present(get_json(kubectl, "bm", "x", "-n", namespace))["spec"]
        assert (
            spec["replicas"] == 1
            and spec["paused"] is False
            and spec["imagePullPolicy"] == "IfNotPresent"
        )
        assert spec["storage"] == {"size": "1Gi", "ephemeral": False}


class TestDataClaim:
    """A module without a database keeps SQLite on a claim of its own, one pod at a time."""

    def test_claim_mounted_and_recreate(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("logistics", service="logistics", storage={"size": "2Gi"})
        wait_for(lambda: ready(kubectl, namespace, "logistics"), "logistics Ready", timeout=90)
        claim = get_json(kubectl, "pvc", "logistics-data", "-n", namespace)
        assert claim is not None
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        module_body = get_json(kubectl, "bm", "logistics", "-n", namespace)
        assert module_body is not None
        owner = claim["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("BhivModule", module_body["metadata"]["uid"])
        # The cluster's default class provisioned it (no pod is scheduled before that).
        assert claim["status"]["phase"] == "Bound"
        dep = deployment(kubectl, namespace, "logistics")
        assert dep is not None and dep["spec"]["strategy"] == {"type": "Recreate"}
        pod = dep["spec"]["template"]["spec"]
        claim_ref = {"claimName": "logistics-data"}
        assert {"name": "data", "persistentVolumeClaim": claim_ref} in pod["volumes"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {"name": "data", "mountPath": env["BHIV_DATA_DIR"]} in container["volumeMounts"]

        # Deleting the module deletes its claim (garbage collection, owner reference).
        kubectl("delete", "bm", "logistics", "-n", namespace, "--wait=true", "--timeout=60s")

        def claim_gone() -> bool:
            left = get_json(kubectl, "pvc", "logistics-data", "-n", namespace)
            return left is None or bool(left["metadata"].get("deletionTimestamp"))

        wait_for(claim_gone, "the claim to go with its module")

    def test_database_means_no_claim_and_rolling_updates(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        database = {"secretRef": {"name": "crm-db"}}
        modules("crm", service="crm", replicas=2, database=database)
        dep = wait_for(lambda: deployment(kubectl, namespace, "crm"), "the crm Deployment")
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        assert get_json(kubectl, "pvc", "crm-data", "-n", namespace) is None


class TestStartupOrder:
    def test_dependent_waits_then_proceeds(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("logistics", service="logistics", depends_on=["integrations"])
        body = wait_for(
            lambda: (
                (b := get_json(kubectl, "bm", "logistics", "-n", namespace))
                and condition(b, "DependenciesReady").get("reason") == "DependencyNotFound"
                and b
            ),
            "logistics to report its missing dependency",
        )
        assert body["status"]["waitingFor"] == ["integrations"]
        assert deployment(kubectl, namespace, "logistics") is None

        modules("integrations", service="integrations")
        wait_for(lambda: ready(kubectl, namespace, "integrations"), "integrations Ready")
        wait_for(
            lambda: ready(kubectl, namespace, "logistics"), "logistics Ready after integrations"
        )
        body = present(get_json(kubectl, "bm", "logistics", "-n", namespace))
        assert (
            body["status"]["waitingFor"] == []
            and condition(body, "DependenciesReady")["status"] == "True"
        )
        assert body["status"]["url"] == f"http://logistics.{namespace}.svc.cluster.local:8001"
        assert (
            body["status"]["selector"]
            == "app.kubernetes.io/name=bhiv,app.kubernetes.io/instance=logistics"
        )
        # The dependency's Ready transition came first.
        dep = condition(get_json(kubectl, "bm", "integrations", "-n", namespace), "Ready")[
            "lastTransitionTime"
        ]
        assert dep <= condition(body, "Ready")["lastTransitionTime"]

    def test_waiting_for_a_dependency_that_is_not_ready(
        self,
        kubectl: Kubectl,
        namespace: str,
        operator: OperatorProcess,
        modules: Any,
        kube_cluster: Any,
    ) -> None:
        kube_env = kube_cluster.subprocess_env()
        modules("integrations", service="integrations", paused=True)
        modules("llm", service="llm-query", depends_on=["integrations"])
        body = wait_for(
            lambda: (
                (b := get_json(kubectl, "bm", "llm", "-n", namespace))
                and condition(b, "Ready").get("reason") == "WaitingForDependencies"
                and b
            ),
            "llm to wait",
        )
        assert body["status"]["waitingFor"] == ["integrations"]
        printed = kubectl("get", "bm", "-n", namespace).stdout
        assert "WaitingForDependencies" in printed and "REASON" in printed
        assert "WAITING FOR" in printed and '["integrations"]' in printed
        # `bhiv modules`: the same as a tree, the waiting module under what it waits for.
        tree = subprocess.run(
            [sys.executable, "-m", "bhiv", "modules", "-n", namespace],
            capture_output=True,
            text=True,
            timeout=60,
            env=kube_env,
            check=False,
        )
        assert tree.returncode == 0, tree.stderr
        lines = tree.stdout.splitlines()
        assert lines[0] == f"namespace {namespace}: 2 modules, 0 Ready"
        assert lines[1].startswith("integrations [integrations]  Paused")
        assert lines[2].startswith("└── llm [llm-query]  WaitingForDependencies")
        assert lines[2].endswith("(waiting for integrations)")
        events = kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=llm"
        ).stdout
        assert "WaitingForDependencies" in events
        kubectl(
            "patch",
            "bm",
            "integrations",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec": {"paused": false}}',
        )
        wait_for(lambda: ready(kubectl, namespace, "llm"), "llm Ready once its dependency runs")

    def test_cycle_reported_by_every_member_until_broken(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("a", depends_on=["b"])
        modules("b", depends_on=["c"])
        modules("c", depends_on=["a"])
        for name in "abc":
            wait_for(
                lambda n=name: (
                    condition(get_json(kubectl, "bm", n, "-n", namespace), "DependenciesReady").get(
                        "reason"
                    )
                    == "DependencyCycle"
                ),
                f"{name} to report the cycle",
            )
        msg = condition(get_json(kubectl, "bm", "a", "-n", namespace), "DependenciesReady")[
            "message"
        ]
        assert "a, b, c" in msg
        kubectl(
            "patch",
            "bm",
            "c",
            "-n",
            namespace,
            "--type=json",
            "-p",
            '[{"op": "remove", "path": "/spec/dependsOn"}]',
        )
        for name in "cba":
            wait_for(
                lambda n=name: ready(kubectl, namespace, n),
                f"{name} Ready once the cycle is broken",
            )

    def test_running_dependents_survive_an_unready_dependency(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("base", service="integrations")
        modules("app", depends_on=["base"])
        wait_for(lambda: ready(kubectl, namespace, "app"), "app Ready")
        kubectl("scale", "bm/base", "-n", namespace, "--replicas=0")
        wait_for(
            lambda: (
                condition(get_json(kubectl, "bm", "app", "-n", namespace), "DependenciesReady").get(
                    "status"
                )
                == "False"
            ),
            "app to report base unready",
        )
        assert deployment(kubectl, namespace, "app") is not None and ready(
            kubectl, namespace, "app"
        )


class TestWorkloads:
    def test_children_labels_owner_and_restricted_pods(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        kubectl(
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "--overwrite",
        )
        modules("shop", service="logistics", replicas=2, **ON_A_DATABASE)
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready in a restricted namespace")
        for kind in ("deployment", "service", "pdb"):
            obj = get_json(kubectl, kind, "shop", "-n", namespace)
            assert obj is not None, kind
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "bhiv-operator"
            assert obj["metadata"]["ownerReferences"][0]["kind"] == "BhivModule"
            managers = {
                m["manager"]
                for m in obj["metadata"].get("managedFields", [])
                if m.get("operation") == "Apply"
            }
            assert managers == {"bhiv-operator"}
        pods = json.loads(
            kubectl(
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                "app.kubernetes.io/instance=shop",
                "-o",
                "json",
            ).stdout
        )
        assert len(pods["items"]) == 2

    def test_pod_controls_reach_the_pods(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        """Pull secrets, placement, priority, labels and a changed (still restricted)
        security context, on pods the API server admitted in a restricted namespace."""
        kubectl(
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "--overwrite",
        )
        node = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
        node_name = node["metadata"]["name"]
        pool = f"pool-{namespace}"
        kubectl("label", "node", node_name, f"bhiv-test-pool={pool}", "--overwrite")
        priority = f"bhiv-{namespace}"
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": priority},
                    "value": 1000,
                }
            ),
        )
        try:
            modules(
                "shop",
                service="logistics",
                replicas=2,
                imagePullSecrets=[{"name": "private-registry"}],
                nodeSelector={"bhiv-test-pool": pool},
                tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                priorityClassName=priority,
                podLabels={"team": "ops"},
                podAnnotations={"example.com/owner": "ops"},
                securityContext={"runAsUser": 20000, "runAsGroup": 20000},
                **ON_A_DATABASE,
            )
            wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready", timeout=90)
            pods = json.loads(
                kubectl("get", "pods", "-n", namespace, "-l", "team=ops", "-o", "json").stdout
            )["items"]
            assert len(pods) == 2
            for pod in pods:
                spec = pod["spec"]
                assert spec["imagePullSecrets"] == [{"name": "private-registry"}]
                assert spec["nodeName"] == node_name
                assert spec["priorityClassName"] == priority and spec["priority"] == 1000
                assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in spec[
                    "tolerations"
                ]
                assert spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
                assert pod["metadata"]["annotations"]["example.com/owner"] == "ops"
                sc = spec["containers"][0]["securityContext"]
                assert sc["runAsUser"] == 20000 and sc["capabilities"] == {"drop": ["ALL"]}
        finally:
            kubectl("delete", "bm", "shop", "-n", namespace, "--wait=false", check=False)
            kubectl("label", "node", node_name, "bhiv-test-pool-", check=False)
            kubectl("delete", "priorityclass", priority, "--wait=false", check=False)

    def test_a_module_whose_pods_cannot_be_created_says_why(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        """The README's gateway module in a namespace without its ServiceAccount: the
        ReplicaSet cannot create pods, and the module's Ready says exactly that."""
        modules("gateway", service="gateway")

        def failed_create() -> dict[str, Any] | None:
            cond = condition(get_json(kubectl, "bm", "gateway", "-n", namespace), "Ready")
            return cond if cond.get("reason") == "FailedCreate" else None

        cond = wait_for(failed_create, "Ready=False FailedCreate", timeout=60)
        assert 'serviceaccount "bhiv-gateway" not found' in cond["message"]
        events = kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "reason=FailedCreate",
            "-o",
            "json",
        ).stdout
        assert any(
            e["type"] == "Warning" and e["involvedObject"]["kind"] == "BhivModule"
            for e in json.loads(events)["items"]
        )
        # Given its ServiceAccount, the module recovers without anyone touching it.
        kubectl("create", "serviceaccount", "bhiv-gateway", "-n", namespace)
        wait_for(lambda: ready(kubectl, namespace, "gateway"), "gateway Ready", timeout=90)

    def test_an_unschedulable_pod_is_reported(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop", service="logistics", nodeSelector={"bhiv-test-pool": "nowhere"})

        def unschedulable() -> dict[str, Any] | None:
            cond = condition(get_json(kubectl, "bm", "shop", "-n", namespace), "Ready")
            return cond if cond.get("reason") == "Unschedulable" else None

        cond = wait_for(unschedulable, "Ready=False Unschedulable", timeout=60)
        assert cond["message"].startswith("pod shop-") and "node" in cond["message"]

    def test_network_policies_follow_depends_on(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        on = {"networkPolicy": {"enabled": True}}
        modules("store", service="logistics", **on)
        modules("orders", service="crm", depends_on=["store"], **on)
        modules("front", service="gateway", depends_on=["orders"], **on)

        def allowed(name: str) -> list[str] | None:
            policy = get_json(kubectl, "networkpolicy", name, "-n", namespace)
            if policy is None:
                return None
            peers = policy["spec"]["ingress"][0]["from"]
            exprs = [p["podSelector"].get("matchExpressions") for p in peers if "podSelector" in p]
            return next((e[0]["values"] for e in exprs if e), [])

        wait_for(lambda: allowed("store") == ["front", "orders"], "store's policy: its dependents")
        gateway_policy = present(get_json(kubectl, "networkpolicy", "front", "-n", namespace))
        assert gateway_policy["spec"]["ingress"][0]["from"][0] == {"podSelector": {}}
        # A new dependent is let in, without restarting anything ...
        modules("reports", service="agent-orchestration", depends_on=["store"], **on)
        wait_for(lambda: allowed("store") == ["front", "orders", "reports"], "store admits reports")
        # ... and one that stops depending on it is shut out again.
        modules("orders", service="crm", **on)
        wait_for(lambda: allowed("store") == ["reports"], "store no longer admits orders or front")
        # Switched off, the policy goes.
        modules("store", service="logistics")
        wait_for(
            lambda: get_json(kubectl, "networkpolicy", "store", "-n", namespace) is None,
            "store's policy removed",
        )

    def test_drift_is_restored(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop")
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready")
        uid = present(deployment(kubectl, namespace, "shop"))["metadata"]["uid"]
        kubectl("delete", "deployment", "shop", "-n", namespace)
        wait_for(
            lambda: (d := deployment(kubectl, namespace, "shop")) and d["metadata"]["uid"] != uid,
            "Deployment recreated",
            timeout=5,
        )
        kubectl("set", "image", "deployment/shop", "-n", namespace, "logistics=evil:latest")
        wait_for(
            lambda: (
                present(deployment(kubectl, namespace, "shop"))["spec"]["template"]["spec"][
                    "containers"
                ][0]["image"]
                == "bhiv-core:test"
            ),
            "image edit reverted",
            timeout=5,
        )
        kubectl("delete", "service", "shop", "-n", namespace)
        wait_for(
            lambda: get_json(kubectl, "service", "shop", "-n", namespace),
            "Service recreated",
            timeout=5,
        )

    def test_scale_and_autoscaling_toggle(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop", **ON_A_DATABASE)
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready")
        kubectl("scale", "bm/shop", "-n", namespace, "--replicas=3")
        wait_for(
            lambda: present(deployment(kubectl, namespace, "shop"))["spec"]["replicas"] == 3,
            "Deployment scaled to 3",
        )
        wait_for(
            lambda: (
                present(get_json(kubectl, "bm", "shop", "-n", namespace))["status"].get(
                    "replicasReady"
                )
                == "3/3"
            ),
            "3/3 ready",
        )
        assert get_json(kubectl, "pdb", "shop", "-n", namespace) is not None

        kubectl(
            "patch",
            "bm",
            "shop",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec": {"autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 6}}}',
        )
        hpa = wait_for(lambda: get_json(kubectl, "hpa", "shop", "-n", namespace), "HPA created")
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
        wait_for(
            lambda: (
                not any(
                    m.get("operation") == "Apply"
                    and "f:replicas" in json.dumps(m.get("fieldsV1", {}).get("f:spec", {}))
                    for m in present(deployment(kubectl, namespace, "shop"))["metadata"][
                        "managedFields"
                    ]
                    if m["manager"] == "bhiv-operator"
                )
            ),
            "replicas handed to the HPA",
        )
        # Handing replicas to the HPA never dropped the Deployment to the default of 1.
        assert present(deployment(kubectl, namespace, "shop"))["spec"]["replicas"] >= 2

        kubectl(
            "patch",
            "bm",
            "shop",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec": {"autoscaling": {"enabled": false}, "replicas": 1}}',
        )
        wait_for(lambda: get_json(kubectl, "hpa", "shop", "-n", namespace) is None, "HPA removed")
        wait_for(
            lambda: present(deployment(kubectl, namespace, "shop"))["spec"]["replicas"] == 1,
            "replicas back to spec",
        )
        wait_for(
            lambda: get_json(kubectl, "pdb", "shop", "-n", namespace) is None,
            "PDB removed with one pod",
        )

    def test_image_change_rolls_the_deployment(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop", replicas=2, **ON_A_DATABASE)
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready")
        kubectl(
            "patch",
            "bm",
            "shop",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec": {"image": "bhiv-core:next"}}',
        )
        body = wait_for(
            lambda: (
                (b := get_json(kubectl, "bm", "shop", "-n", namespace))
                and b["status"]["observedGeneration"] == b["metadata"]["generation"]
                and condition(b, "Progressing").get("reason") == "RolloutComplete"
                and ready(kubectl, namespace, "shop")
                and b
            ),
            "rollout to complete",
        )
        assert (
            present(deployment(kubectl, namespace, "shop"))["spec"]["template"]["spec"][
                "containers"
            ][0]["image"]
            == "bhiv-core:next"
        )
        events = kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=shop"
        ).stdout
        assert "RollingOut" in events or "ScalingReplicaSet" in events
        assert condition(body, "Ready")["observedGeneration"] == body["metadata"]["generation"]

    def test_delete_removes_children_and_never_sticks(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop", replicas=2, **ON_A_DATABASE)
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready")
        assert not present(get_json(kubectl, "bm", "shop", "-n", namespace))["metadata"].get(
            "finalizers"
        )
        kubectl("delete", "bm", "shop", "-n", namespace, "--timeout=30s")
        for kind in ("deployment", "service", "pdb"):
            wait_for(
                lambda k=kind: get_json(kubectl, k, "shop", "-n", namespace) is None,
                f"{kind} garbage-collected",
            )


class TestOperations:
    def test_restart_mid_reconcile_converges_without_duplicates(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        names = [f"m{i}" for i in range(12)]
        for i, name in enumerate(names):
            modules(name, depends_on=[names[i - 1]] if i else None)
        wait_for(lambda: deployment(kubectl, namespace, "m2"), "the chain to start")
        operator.stop(signal.SIGKILL)
        operator.start()
        for name in names:
            wait_for(
                lambda n=name: ready(kubectl, namespace, n),
                f"{name} Ready after the restart",
                timeout=120,
            )
        deployments = json.loads(
            kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout
        )["items"]
        assert sorted(d["metadata"]["name"] for d in deployments) == sorted(names)
        rs = json.loads(kubectl("get", "replicasets", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        assert len(rs) == len(names)

    def test_metrics_and_liveness(
        self, kubectl: Kubectl, namespace: str, operator: OperatorProcess, modules: Any
    ) -> None:
        modules("shop")
        wait_for(lambda: ready(kubectl, namespace, "shop"), "shop Ready")
        text = wait_for(
            lambda: (t := operator.metrics()) and 'ready="True"' in t and t,
            "module gauge",
            timeout=30,
        )
        assert 'bhiv_operator_reconciles_total{result="ok"}' in text
        assert "bhiv_operator_reconcile_duration_seconds_bucket" in text
        assert "bhiv_operator_queue_wait_duration_seconds_count" in text
        assert "bhiv_operator_queue_depth" in text
        assert "bhiv_operator_queue_oldest_seconds" in text

    def test_operator_is_refused_what_its_role_does_not_grant(
        self, kubectl: Kubectl, namespace: str, operator_rbac: Any
    ) -> None:
        sa = f"system:serviceaccount:{namespace}:bhiv-operator"
        assert (
            kubectl(
                "auth", "can-i", "patch", "deployments", "-n", namespace, "--as", sa, check=False
            ).stdout.strip()
            == "yes"
        )
        for verb, resource in (
            ("get", "secrets"),
            ("create", "pods"),
            ("delete", "bhivmodules"),
            ("list", "deployments -A"),
        ):
            args = ["auth", "can-i", verb, *resource.split(), "--as", sa]
            if "-A" not in resource:
                args += ["-n", namespace]
            assert kubectl(*args, check=False).stdout.strip() == "no", (verb, resource)


def test_kustomization_applies_in_one_run_on_a_fresh_cluster(
    kubectl: Kubectl, kube_cluster: Any, namespace: str, tmp_path: Path
) -> None:
    """`kubectl apply -k manifests/` once, with no CRD installed yet (namespace swapped
    for the test's; the operator runs here as its ServiceAccount, with the arguments
    and the bootstrap ConfigMap its Deployment would mount): all six modules come up
    in order, reading one generated Secret of shared secrets."""
    from tests.cluster.operator.conftest import service_account_kubeconfig

    if not kube_cluster.managed:
        pytest.skip("deletes the BhivModule and KopfPeering CRDs: needs a cluster of this session")
    crd_dir = str(REPO / "manifests" / "crd")
    kubectl("delete", "-f", crd_dir, "--ignore-not-found", "--wait=true", "--timeout=120s")

    rendered = kubectl("kustomize", str(REPO / "manifests")).stdout
    keep, operator_args = [], []
    for doc in yaml.safe_load_all(rendered):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Namespace":
            continue  # the test's namespace exists
        if kind == "Deployment" and name == "bhiv-operator":
            operator_args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            continue  # the operator runs here, not as a pod
        if kind != "CustomResourceDefinition":
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", ()):
            subject["namespace"] = namespace
        keep.append(doc)
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(keep), check=False)
    assert result.returncode == 0, result.stderr

    # What the Deployment mounts at /etc/bhiv/bootstrap, and its own arguments.
    listed = kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout
    configmaps = json.loads(listed)["items"]
    bootstrap = next(c for c in configmaps if c["metadata"]["name"].startswith("bhiv-bootstrap-"))
    folder = tmp_path / "bootstrap"
    folder.mkdir()
    for file, text in bootstrap["data"].items():
        (folder / file).write_text(text)
    args = operator_args[operator_args.index("--bootstrap") :]
    args[1] = str(folder)
    assert "--shared-secret" in args

    config = service_account_kubeconfig(kubectl, namespace, "bhiv-operator", tmp_path / "sa.kc")
    proc = OperatorProcess(namespace, config, tmp_path / "op.log", args=args)
    proc.start()
    try:
        names = ["integrations", "llm-query", "logistics", "crm", "agent-orchestration", "gateway"]
        for name in names:
            wait_for(lambda n=name: ready(kubectl, namespace, n), f"{name} Ready", timeout=90)
        became = {
            n: condition(get_json(kubectl, "bm", n, "-n", namespace), "Ready")["lastTransitionTime"]
            for n in names
        }
        assert (
            became["integrations"] <= became["llm-query"] <= min(became["logistics"], became["crm"])
        )
        assert (
            max(became["logistics"], became["crm"])
            <= became["agent-orchestration"]
            <= became["gateway"]
        )

        secret = get_json(kubectl, "secret", "bhiv-shared-secrets", "-n", namespace)
        assert secret is not None
        assert sorted(secret["data"]) == ["BHIV_CREDENTIALS_KEY", "BHIV_JWT_SECRET"]
        assert len({base64.b64decode(v) for v in secret["data"].values()}) == 2
        dep = deployment(kubectl, namespace, "integrations")
        assert dep is not None
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        refs = {e["name"]: e["valueFrom"].get("secretKeyRef") for e in env if "valueFrom" in e}
        for key in ("BHIV_JWT_SECRET", "BHIV_CREDENTIALS_KEY"):
            assert refs[key] == {"name": "bhiv-shared-secrets", "key": key}

        # A restarted operator never replaces the Secret (pods would stop agreeing).
        proc.stop()
        proc.start()
        wait_for(lambda: ready(kubectl, namespace, "gateway"), "gateway Ready after the restart")
        again = get_json(kubectl, "secret", "bhiv-shared-secrets", "-n", namespace)
        assert again is not None and again["data"] == secret["data"]
    finally:
        proc.stop()
