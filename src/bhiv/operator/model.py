"""A typed, defaulted view of a BhivModule's spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bhiv.catalog import DEFAULT_PORTS, SERVICES

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 3
    target_cpu: int = 80


@dataclass(frozen=True)
class Storage:
    """Where a module without a database keeps its SQLite files (spec.storage)."""

    size: str = "1Gi"
    storage_class: str | None = None  # None: the cluster's default StorageClass
    ephemeral: bool = False  # the opt-out: a throwaway emptyDir per pod


@dataclass(frozen=True)
class NetworkPolicySpec:
    """spec.networkPolicy: who may reach the module's pods, and where they may go."""

    enabled: bool = False
    # Peers (as in a NetworkPolicy rule) allowed in besides the module's dependents and
    # the gateway: for the gateway, its ingress controller; for others, callers that do
    # not depend on them (e.g. integrations writing synced records).
    ingress_from: tuple[dict[str, Any], ...] = ()
    # Who may scrape /metrics (a peer: namespaceSelector and/or podSelector).
    monitoring: dict[str, Any] | None = None
    # Egress left open unless restricted: then DNS, the module's dependencies and these
    # CIDRs (its database, declared external hosts) only.
    egress_restricted: bool = False
    egress_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> NetworkPolicySpec:
        egress = spec.get("egress") or {}
        return cls(
            enabled=bool(spec.get("enabled", False)),
            ingress_from=tuple(spec.get("ingressFrom") or ()),
            monitoring=spec.get("monitoring") or None,
            egress_restricted=bool(egress.get("restricted", False)),
            egress_cidrs=tuple(egress.get("cidrs") or ()),
        )


@dataclass(frozen=True)
class PodControls:
    """Where and as whom the pods run (spec.imagePullSecrets ... spec.securityContext)."""

    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    # None: the operator's default (spread over nodes when more than one pod runs).
    topology_spread_constraints: tuple[dict[str, Any], ...] | None = None
    priority_class_name: str | None = None
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    security_context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PodControls:
        spread = spec.get("topologySpreadConstraints")
        return cls(
            image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or ()),
            service_account_name=spec.get("serviceAccountName") or None,
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            affinity=spec.get("affinity") or None,
            topology_spread_constraints=None if spread is None else tuple(spread),
            priority_class_name=spec.get("priorityClassName") or None,
            pod_labels=dict(spec.get("podLabels") or {}),
            pod_annotations=dict(spec.get("podAnnotations") or {}),
            security_context=dict(spec.get("securityContext") or {}),
        )


@dataclass(frozen=True)
class Module:
    name: str
    namespace: str
    uid: str
    generation: int
    service: str
    image: str
    image_pull_policy: str
    replicas: int
    port: int
    depends_on: tuple[str, ...]
    autoscaling: Autoscaling
    resources: dict[str, Any]
    env: tuple[dict[str, Any], ...]
    env_from: tuple[dict[str, Any], ...]
    database_secret: tuple[str, str] | None
    paused: bool
    labels: dict[str, str] = field(default_factory=dict)
    storage: Storage = field(default_factory=Storage)
    pod: PodControls = field(default_factory=PodControls)
    network_policy: NetworkPolicySpec = field(default_factory=NetworkPolicySpec)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Module:
        meta, spec = body["metadata"], body.get("spec") or {}
        scaling = spec.get("autoscaling") or {}
        secret = (spec.get("database") or {}).get("secretRef")
        storage = spec.get("storage") or {}
        service = spec["service"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            service=service,
            image=spec["image"],
            image_pull_policy=spec.get("imagePullPolicy") or "IfNotPresent",
            replicas=int(spec.get("replicas", 1)),
            port=int(spec.get("port") or DEFAULT_PORTS[service]),
            depends_on=tuple(spec.get("dependsOn") or ()),
            autoscaling=Autoscaling(
                enabled=bool(scaling.get("enabled", False)),
                min_replicas=int(scaling.get("minReplicas", 1)),
                max_replicas=int(scaling.get("maxReplicas", 3)),
                target_cpu=int(scaling.get("targetCPUUtilizationPercentage", 80)),
            ),
            resources=spec.get("resources") or DEFAULT_RESOURCES,
            env=tuple(spec.get("env") or ()),
            env_from=tuple(spec.get("envFrom") or ()),
            database_secret=(secret["name"], secret.get("key") or "url") if secret else None,
            paused=bool(spec.get("paused", False)),
            labels=dict(meta.get("labels") or {}),
            storage=Storage(
                size=str(storage.get("size") or Storage.size),
                storage_class=storage.get("storageClassName") or None,
                ephemeral=bool(storage.get("ephemeral", False)),
            ),
            pod=PodControls.from_spec(spec),
            network_policy=NetworkPolicySpec.from_spec(spec.get("networkPolicy") or {}),
        )

    @property
    def keeps_data_on_claim(self) -> bool:
        """SQLite on a PersistentVolumeClaim: a service with data (the gateway keeps
        none), no database, no ephemeral opt-out. One pod at a time may use it."""
        has_data = SERVICES[self.service].database
        return has_data and self.database_secret is None and not self.storage.ephemeral

    @property
    def max_pods(self) -> int:
        """The most pods the module may run: above one, they are spread over nodes."""
        return self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas

    @property
    def min_pods(self) -> int:
        """The fewest pods the module runs: what a disruption budget protects."""
        return self.autoscaling.min_replicas if self.autoscaling.enabled else self.replicas
