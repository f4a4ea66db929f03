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
        )

    @property
    def keeps_data_on_claim(self) -> bool:
        """SQLite on a PersistentVolumeClaim: a service with data (the gateway keeps
        none), no database, no ephemeral opt-out. One pod at a time may use it."""
        has_data = SERVICES[self.service].database
        return has_data and self.database_secret is None and not self.storage.ephemeral

    @property
    def min_pods(self) -> int:
        """The fewest pods the module runs: what a disruption budget protects."""
        return self.autoscaling.min_replicas if self.autoscaling.enabled else self.replicas
