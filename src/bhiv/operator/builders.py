"""Pure builders: a Module in, plain manifest dicts out. No I/O, unit-tested.

Every object carries the app.kubernetes.io labels and an owner reference to
its BhivModule, so `kubectl delete bm/X` removes it through garbage collection
and no finalizer is ever needed.
"""

from __future__ import annotations

from typing import Any

from bhiv.operator import GROUP, KIND, VERSION
from bhiv.operator.model import Module
from bhiv.operator.security import (
    POD_SECURITY_CONTEXT,
    container_security_context,
)

PART_OF = "bhiv-core"
MANAGED_BY = "bhiv-operator"
PRE_STOP_SECONDS = 5
# BHIV_DATA_DIR (SQLite files): the "data" volume, a PersistentVolumeClaim or an
# emptyDir (see build_data_claim); the root filesystem is read-only.
DATA_DIR = "/var/lib/bhiv"
DATA_VOLUME = "data"
# The gateway discovers services from the BhivModules of its namespace, with
# this ServiceAccount's read-only access (manifests/gateway/rbac.yaml, the chart).
GATEWAY_SERVICE_ACCOUNT = "bhiv-gateway"


def selector_labels(module: Module) -> dict[str, str]:
    # name + instance only: selectors are immutable, so nothing that can change goes in.
    return {"app.kubernetes.io/name": "bhiv", "app.kubernetes.io/instance": module.name}


def labels(module: Module) -> dict[str, str]:
    return {
        **selector_labels(module),
        "app.kubernetes.io/component": module.service,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(module: Module) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(module).items())


def _metadata(module: Module) -> dict[str, Any]:
    return {
        "name": module.name,
        "namespace": module.namespace,
        "labels": labels(module),
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": module.name,
                "uid": module.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def _env(module: Module) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "BHIV_HOST", "value": "0.0.0.0"},  # noqa: S104 - a pod serves on its own IP
        {"name": "BHIV_PORT", "value": str(module.port)},
        {"name": "BHIV_DATA_DIR", "value": DATA_DIR},
        # Said outright rather than left to KUBERNETES_SERVICE_HOST: a pod never
        # makes its own JWT secret or credentials key (the others would not share it).
        {"name": "BHIV_REQUIRE_SHARED_SECRETS", "value": "true"},
    ]
    if module.service == "gateway":
        env.append({"name": "BHIV_GATEWAY_DISCOVERY", "value": "kubernetes"})
        env.append(
            {
                "name": "BHIV_GATEWAY_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            }
        )
    if module.database_secret:
        name, key = module.database_secret
        env.append(
            {"name": "BHIV_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
        )
    # The user's variables win: a default of the same name is replaced in place
    # (server-side apply refuses two entries of one name), the rest come last.
    user = {e["name"]: dict(e) for e in module.env}
    merged = [user.pop(e["name"], e) for e in env]
    return merged + list(user.values())


def data_claim_name(module: Module) -> str:
    return f"{module.name}-data"


def build_data_claim(module: Module) -> dict[str, Any] | None:
    """The PersistentVolumeClaim holding the module's SQLite files, when it keeps
    them on one (no database, not ephemeral). Owned by the module: deleting the
    BhivModule deletes the claim (and, with reclaim policy Delete, the data)."""
    if not module.keeps_data_on_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": module.storage.size}},
    }
    if module.storage.storage_class:
        spec["storageClassName"] = module.storage.storage_class
    metadata = {**_metadata(module), "name": data_claim_name(module)}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def _data_volume(module: Module) -> dict[str, Any]:
    if module.keeps_data_on_claim:
        claim = {"claimName": data_claim_name(module)}
        return {"name": DATA_VOLUME, "persistentVolumeClaim": claim}
    # A database holds the data (or the user opted out): the directory only
    # holds what a pod may lose.
    return {"name": DATA_VOLUME, "emptyDir": {"sizeLimit": module.storage.size}}


def _strategy(module: Module) -> dict[str, Any]:
    if module.keeps_data_on_claim:
        # Never two pods on one SQLite file (nor a new pod waiting forever for a
        # ReadWriteOnce claim the old one holds on another node): the old pod
        # stops before the new one starts.
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def _pod_metadata(module: Module) -> dict[str, Any]:
    # The module's own labels first: the operator's (its selector among them) win.
    metadata: dict[str, Any] = {"labels": {**module.pod.pod_labels, **labels(module)}}
    if module.pod.pod_annotations:
        metadata["annotations"] = dict(module.pod.pod_annotations)
    return metadata


def default_spread(module: Module) -> list[dict[str, Any]]:
    """With more than one pod: one per node where the scheduler can, never a refusal."""
    if module.max_pods <= 1:
        return []
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(module)},
        }
    ]


def _placement(module: Module) -> dict[str, Any]:
    """Who the pods run as, where they land and what they pull with (spec fields)."""
    pod = module.pod
    placement: dict[str, Any] = {}
    account = pod.service_account_name or (
        GATEWAY_SERVICE_ACCOUNT if module.service == "gateway" else None
    )
    if account:
        placement["serviceAccountName"] = account
    if pod.image_pull_secrets:
        placement["imagePullSecrets"] = [{"name": n} for n in pod.image_pull_secrets]
    if pod.node_selector:
        placement["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        placement["tolerations"] = [dict(t) for t in pod.tolerations]
    if pod.affinity:
        placement["affinity"] = pod.affinity
    spread = (
        default_spread(module)
        if pod.topology_spread_constraints is None
        else [dict(c) for c in pod.topology_spread_constraints]
    )
    if spread:
        placement["topologySpreadConstraints"] = spread
    if pod.priority_class_name:
        placement["priorityClassName"] = pod.priority_class_name
    return placement


def build_deployment(module: Module, *, replicas: int | None) -> dict[str, Any]:
    """The Deployment; ``replicas=None`` leaves the count to the autoscaler."""
    probe_common = {"periodSeconds": 10, "timeoutSeconds": 2}
    container: dict[str, Any] = {
        "name": module.service,
        "image": module.image,
        "imagePullPolicy": module.image_pull_policy,
        "args": ["serve", module.service],
        "ports": [{"name": "http", "containerPort": module.port, "protocol": "TCP"}],
        "env": _env(module),
        "resources": module.resources,
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "failureThreshold": 30,
            **probe_common,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "failureThreshold": 3,
            **probe_common,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health/ready", "port": "http"},
            "failureThreshold": 3,
            **probe_common,
        },
        "securityContext": container_security_context(module.pod.security_context),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of its own
            {"name": DATA_VOLUME, "mountPath": DATA_DIR},
        ],
        # Endpoint removal is asynchronous: kube-proxy and the ingress controller keep
        # sending new requests for a moment after the pod is marked terminating. It
        # keeps serving meanwhile, then SIGTERM lets uvicorn drain (up to 20 s, hence a
        # grace period of 30). The sleep action needs no binary in the image.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
    }
    if module.env_from:
        container["envFrom"] = [dict(e) for e in module.env_from]
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(module)},
        "revisionHistoryLimit": 5,
        "strategy": _strategy(module),
        "template": {
            "metadata": _pod_metadata(module),
            "spec": {
                # Only the gateway talks to the Kubernetes API; other pods get no token.
                "automountServiceAccountToken": module.service == "gateway",
                **_placement(module),
                "enableServiceLinks": False,
                "securityContext": dict(POD_SECURITY_CONTEXT),
                "terminationGracePeriodSeconds": 30,
                "containers": [container],
                "volumes": [
                    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    _data_volume(module),
                ],
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(module),
        "spec": spec,
    }


def build_service(module: Module) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(module),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(module),
            "ports": [
                {"name": "http", "port": module.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_hpa(module: Module) -> dict[str, Any] | None:
    if not module.autoscaling.enabled:
        return None
    a = module.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(module),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": module.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": a.target_cpu},
                    },
                }
            ],
        },
    }


def build_pdb(module: Module) -> dict[str, Any] | None:
    """A disruption budget, only when more than one pod runs: one pod may go at a time."""
    if module.min_pods <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(module),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(module)}},
    }


def _instances(names: frozenset[str]) -> dict[str, Any]:
    """A peer: the pods of these modules (in the policy's namespace)."""
    return {
        "podSelector": {
            "matchExpressions": [
                {"key": "app.kubernetes.io/instance", "operator": "In", "values": sorted(names)}
            ]
        }
    }


def build_network_policy(
    module: Module, dependents: frozenset[str], dependencies: frozenset[str]
) -> dict[str, Any] | None:
    """Who may reach the module's pods, from the dependency graph: the modules that
    depend on it (directly or through others), the gateway, the monitoring peer and
    the module's own ingressFrom; for the gateway, its namespace and its ingress
    controller (ingressFrom). With egress restricted: DNS, its dependencies, its CIDRs.
    """
    policy = module.network_policy
    if not policy.enabled:
        return None
    http = [{"protocol": "TCP", "port": "http"}]
    peers: list[dict[str, Any]] = []
    if module.service == "gateway":
        peers.append({"podSelector": {}})  # every pod of its namespace
    else:
        if dependents:
            peers.append(_instances(dependents))
        gateway = {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/part-of": PART_OF}
        peers.append({"podSelector": {"matchLabels": gateway}})
    peers += [dict(p) for p in policy.ingress_from]
    if policy.monitoring:
        peers.append(dict(policy.monitoring))
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(module)},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers, "ports": http}],
    }
    if policy.egress_restricted:
        dns = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        egress: list[dict[str, Any]] = [{"to": [{"namespaceSelector": {}}], "ports": dns}]
        if module.service == "gateway":
            bhiv = {"app.kubernetes.io/part-of": PART_OF}
            egress.append({"to": [{"podSelector": {"matchLabels": bhiv}}]})
        elif dependencies:
            egress.append({"to": [_instances(dependencies)]})
        if policy.egress_cidrs:
            egress.append({"to": [{"ipBlock": {"cidr": c}} for c in policy.egress_cidrs]})
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(module),
        "spec": spec,
    }


def service_url(module: Module, cluster_domain: str = "cluster.local") -> str:
    return f"http://{module.name}.{module.namespace}.svc.{cluster_domain}:{module.port}"
