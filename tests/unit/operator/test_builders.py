from __future__ import annotations

from typing import Any

import pytest

from bhiv.operator import builders
from bhiv.operator.model import Module


def body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "logistics", "namespace": "shop", "uid": "u-1", "generation": 3},
        "spec": {"service": "logistics", "image": "bhiv-core:1", **spec},
    }


def module(**spec: Any) -> Module:
    return Module.from_body(body(**spec))


class TestModel:
    def test_defaults(self) -> None:
        m = module()
        assert (m.port, m.replicas, m.autoscaling.enabled, m.paused) == (8001, 1, False, False)
        assert m.resources["requests"] == {"cpu": "100m", "memory": "128Mi"}

    @pytest.mark.parametrize(
        ("service", "port"), [("gateway", 8000), ("crm", 8002), ("integrations", 8005)]
    )
    def test_port_defaults_to_the_service_kind(self, service: str, port: int) -> None:
        assert Module.from_body(body(service=service)).port == port


class TestDeployment:
    def test_pod_passes_restricted_pod_security(self) -> None:
        d = builders.build_deployment(module(), replicas=2)
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] >= 1000
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]

    def test_probes_and_command(self) -> None:
        c = builders.build_deployment(module(), replicas=1)["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert c["args"] == ["serve", "logistics"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert c["ports"] == [{"name": "http", "containerPort": 8001, "protocol": "TCP"}]

    def test_pod_keeps_serving_until_endpoints_forget_it(self) -> None:
        # A rollout without failed requests: the pod answers for a few seconds after
        # it is marked terminating (kube-proxy and the ingress controller drop it from
        # their endpoints meanwhile), then uvicorn drains for up to 20 s.
        pod = builders.build_deployment(module(), replicas=1)["spec"]["template"]["spec"]
        sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert 3 <= sleep <= 10
        assert pod["terminationGracePeriodSeconds"] >= sleep + 20

    def test_labels_selector_and_owner(self) -> None:
        d = builders.build_deployment(module(), replicas=1)
        assert d["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": "bhiv",
            "app.kubernetes.io/instance": "logistics",
        }
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "bhiv-operator"
        assert labels["app.kubernetes.io/component"] == "logistics"
        assert labels["app.kubernetes.io/part-of"] == "bhiv-core"
        owner = d["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("BhivModule", "u-1", True)

    def test_replicas_left_to_the_autoscaler(self) -> None:
        assert "replicas" not in builders.build_deployment(module(), replicas=None)["spec"]
        assert builders.build_deployment(module(), replicas=0)["spec"]["replicas"] == 0

    def test_database_secret_and_user_env_last(self) -> None:
        m = module(
            database={"secretRef": {"name": "db"}},
            env=[{"name": "BHIV_LOG_LEVEL", "value": "DEBUG"}],
        )
        env = builders.build_deployment(m, replicas=1)["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
        names = [e["name"] for e in env]
        assert names.index("BHIV_DATABASE_URL") < names.index("BHIV_LOG_LEVEL") == len(names) - 1
        db = next(e for e in env if e["name"] == "BHIV_DATABASE_URL")
        assert db["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}


class TestServiceHpaPdb:
    def test_service(self) -> None:
        s = builders.build_service(module(port=9000))
        assert s["spec"]["ports"] == [
            {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
        ]
        assert s["spec"]["selector"]["app.kubernetes.io/instance"] == "logistics"

    def test_hpa_only_when_enabled(self) -> None:
        assert builders.build_hpa(module()) is None
        hpa = builders.build_hpa(
            module(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5})
        )
        assert hpa is not None and hpa["apiVersion"] == "autoscaling/v2"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ({"replicas": 1}, False),
            ({"replicas": 3}, True),
            (
                {
                    "replicas": 3,
                    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4},
                },
                False,
            ),
            (
                {
                    "replicas": 1,
                    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4},
                },
                True,
            ),
        ],
    )
    def test_pdb_when_more_than_one_pod(self, spec: dict[str, Any], expected: bool) -> None:
        pdb = builders.build_pdb(module(**spec))
        assert (pdb is not None) == expected
        if pdb:
            assert pdb["spec"]["maxUnavailable"] == 1

    def test_url(self) -> None:
        assert builders.service_url(module()) == "http://logistics.shop.svc.cluster.local:8001"


def test_only_the_gateway_gets_an_api_token_and_discovers_from_modules() -> None:
    plain = builders.build_deployment(module(), replicas=1)["spec"]["template"]["spec"]
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain
    gw = builders.build_deployment(Module.from_body(body(service="gateway")), replicas=1)["spec"][
        "template"
    ]["spec"]
    assert gw["automountServiceAccountToken"] is True and gw["serviceAccountName"] == "bhiv-gateway"
    env = {e["name"]: e for e in gw["containers"][0]["env"]}
    assert env["BHIV_GATEWAY_DISCOVERY"]["value"] == "kubernetes"
    assert (
        env["BHIV_GATEWAY_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )


def test_user_env_overrides_a_default_of_the_same_name_once() -> None:
    # Server-side apply refuses a list with two entries of one name.
    m = Module.from_body(
        body(
            service="gateway",
            env=[
                {"name": "BHIV_GATEWAY_DISCOVERY", "value": "local"},
                {"name": "EXTRA", "value": "1"},
            ],
        )
    )
    env = builders.build_deployment(m, replicas=1)["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    assert next(e for e in env if e["name"] == "BHIV_GATEWAY_DISCOVERY")["value"] == "local"
    assert names[-1] == "EXTRA"


class TestDataStorage:
    """Without a database, SQLite lives on a claim of the module's, one pod at a time."""

    @staticmethod
    def pod(m: Module) -> dict[str, Any]:
        return builders.build_deployment(m, replicas=1)["spec"]["template"]["spec"]

    def test_claim_defaults_owned_by_the_module(self) -> None:
        claim = builders.build_data_claim(module())
        assert claim is not None and claim["kind"] == "PersistentVolumeClaim"
        meta = claim["metadata"]
        assert (meta["name"], meta["namespace"]) == ("logistics-data", "shop")
        owner = claim["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("BhivModule", "logistics", "u-1")
        assert claim["spec"] == {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        }

    def test_claim_size_and_class(self) -> None:
        m = module(storage={"size": "5Gi", "storageClassName": "fast"})
        claim = builders.build_data_claim(m)
        assert claim is not None
        assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
        assert claim["spec"]["storageClassName"] == "fast"

    def test_claim_mounted_at_the_data_dir_with_recreate(self) -> None:
        m = module()
        d = builders.build_deployment(m, replicas=1)
        pod = d["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {"name": "data", "mountPath": env["BHIV_DATA_DIR"]} in container["volumeMounts"]
        claim_ref = {"claimName": "logistics-data"}
        assert {"name": "data", "persistentVolumeClaim": claim_ref} in pod["volumes"]
        assert d["spec"]["strategy"] == {"type": "Recreate"}

    @pytest.mark.parametrize(
        "m",
        [
            Module.from_body(body(database={"secretRef": {"name": "db"}})),
            Module.from_body(body(storage={"ephemeral": True, "size": "2Gi"})),
            Module.from_body(body(service="gateway")),
        ],
        ids=["database", "ephemeral", "gateway"],
    )
    def test_no_claim_with_a_database_the_opt_out_or_for_the_gateway(self, m: Module) -> None:
        assert builders.build_data_claim(m) is None
        volume = next(v for v in self.pod(m)["volumes"] if v["name"] == "data")
        assert "emptyDir" in volume and "persistentVolumeClaim" not in volume
        strategy = builders.build_deployment(m, replicas=2)["spec"]["strategy"]
        rolling = {"maxUnavailable": 0, "maxSurge": 1}
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": rolling}

    def test_pods_never_make_their_own_shared_secrets(self) -> None:
        env = self.pod(module())["containers"][0]["env"]
        assert {"name": "BHIV_REQUIRE_SHARED_SECRETS", "value": "true"} in env

    def test_ephemeral_size_limits_the_empty_dir(self) -> None:
        pod = self.pod(module(storage={"ephemeral": True, "size": "2Gi"}))
        assert {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]


class TestPodControls:
    """spec.imagePullSecrets ... spec.securityContext reach the pod template."""

    def pod(self, **spec: Any) -> dict[str, Any]:
        m = module(**spec)
        template: dict[str, Any] = builders.build_deployment(m, replicas=m.replicas)["spec"][
            "template"
        ]
        return template

    def test_unset_they_change_nothing(self) -> None:
        spec = self.pod()["spec"]
        for key in (
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "affinity",
            "priorityClassName",
            "serviceAccountName",
            "topologySpreadConstraints",  # one pod: nothing to spread
        ):
            assert key not in spec, key

    def test_every_field_reaches_the_pod(self) -> None:
        toleration = {
            "key": "dedicated",
            "operator": "Equal",
            "value": "bhiv",
            "effect": "NoSchedule",
        }
        affinity: dict[str, Any] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}
        }
        template = self.pod(
            imagePullSecrets=[{"name": "registry-a"}, {"name": "registry-b"}],
            serviceAccountName="logistics-runner",
            nodeSelector={"pool": "apps"},
            tolerations=[toleration],
            affinity=affinity,
            priorityClassName="business-critical",
            podLabels={"team": "ops", "app.kubernetes.io/component": "mine"},
            podAnnotations={"prometheus.io/scrape": "true"},
        )
        spec = template["spec"]
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
        assert spec["serviceAccountName"] == "logistics-runner"
        assert spec["automountServiceAccountToken"] is False  # still no API token
        assert spec["nodeSelector"] == {"pool": "apps"}
        assert spec["tolerations"] == [toleration]
        assert spec["affinity"] == affinity
        assert spec["priorityClassName"] == "business-critical"
        labels = template["metadata"]["labels"]
        assert labels["team"] == "ops"
        assert labels["app.kubernetes.io/component"] == "logistics"  # the operator's label wins
        assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}

    def test_more_than_one_pod_spreads_over_nodes_without_refusing(self) -> None:
        for spec in (
            {"replicas": 3},
            {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
        ):
            [constraint] = self.pod(database={"secretRef": {"name": "db"}}, **spec)["spec"][
                "topologySpreadConstraints"
            ]
            assert constraint["topologyKey"] == "kubernetes.io/hostname"
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            assert constraint["labelSelector"]["matchLabels"] == builders.selector_labels(module())

    def test_own_spread_or_none_at_all(self) -> None:
        zones = [
            {
                "maxSkew": 2,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
            }
        ]
        db = {"secretRef": {"name": "db"}}
        own = self.pod(replicas=3, database=db, topologySpreadConstraints=zones)["spec"]
        assert own["topologySpreadConstraints"] == zones
        none = self.pod(replicas=3, database=db, topologySpreadConstraints=[])["spec"]
        assert "topologySpreadConstraints" not in none

    def test_security_context_changes_stay_restricted(self) -> None:
        container = self.pod(
            securityContext={
                "runAsUser": 20000,
                "readOnlyRootFilesystem": False,
                "capabilities": {"add": ["NET_BIND_SERVICE"]},
            }
        )["spec"]["containers"][0]
        sc = container["securityContext"]
        assert sc["runAsUser"] == 20000 and sc["readOnlyRootFilesystem"] is False
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
        assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True

    def test_the_gateway_keeps_its_account_unless_told_otherwise(self) -> None:
        gateway = Module.from_body(body(service="gateway"))
        spec = builders.build_deployment(gateway, replicas=1)["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == builders.GATEWAY_SERVICE_ACCOUNT
        own = Module.from_body(body(service="gateway", serviceAccountName="edge"))
        spec = builders.build_deployment(own, replicas=1)["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == "edge"
