"""The operator's few calls to the Kubernetes API, through :mod:`bhiv.kube` (lightkube).

Children are written with server-side apply under one field manager, so the
API server merges our intent with other writers' (the HPA's replica count,
kubectl annotations) and reports real conflicts. The operator works on plain
dicts (its builders make them, its reconcile reads them); this class turns them
into lightkube's typed resources and back.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from typing import Any, cast

from lightkube import AsyncClient
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from bhiv.kube import (
    ApiError,
    BhivModule,
    KubeConfig,
    RequestObserver,
    list_once,
    observe_requests,
    status_code,
)
from bhiv.kube import client as make_client
from bhiv.kube import load_config as read_config
from bhiv.operator import FIELD_MANAGER, GROUP, VERSION

log = logging.getLogger("bhiv.operator.kube")

KopfPeering = create_namespaced_resource("kopf.dev", "v1", "KopfPeering", "kopfpeerings")
# Every kind the operator reads or writes, by the ``kind`` of its manifests.
RESOURCES: dict[str, type[NamespacedResource]] = {
    "Deployment": Deployment,
    "Pod": Pod,
    "Service": Service,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "Secret": Secret,
    "KopfPeering": KopfPeering,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "PodDisruptionBudget": PodDisruptionBudget,
    "NetworkPolicy": NetworkPolicy,
    "BhivModule": BhivModule,
}
_config: KubeConfig | None = None


def load_config(kubeconfig: str | None = None) -> None:
    """An explicit kubeconfig wins; else in-cluster; else $KUBECONFIG or ~/.kube/config.

    Loaded once, at start-up, so a missing configuration fails there; every
    :class:`Kube` made afterwards uses it.
    """
    global _config  # noqa: PLW0603 - the process's one cluster, chosen at start-up
    _config = read_config(kubeconfig)


def _resource(kind: str) -> type[NamespacedResource]:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage objects of kind {kind!r}") from None


def _plain(obj: Any) -> dict[str, Any]:
    plain: dict[str, Any] = obj.to_dict()
    return plain


class Kube:
    """Typed calls on plain-dict manifests; every request has a timeout (see bhiv.kube).

    The lightkube client is made on first use, so a Kube made outside an event loop
    (the Kopf startup handler's) binds its connections to the loop that uses it.
    ``on_request`` is told the verb and resource of every request that client sends.
    """

    def __init__(
        self, api: AsyncClient | None = None, on_request: RequestObserver | None = None
    ) -> None:
        self._api = api
        self._on_request = on_request
        if api is not None and on_request is not None:
            observe_requests(api, on_request)

    @property
    def api(self) -> AsyncClient:
        if self._api is None:
            self._api = make_client(_config, field_manager=FIELD_MANAGER)
            if self._on_request is not None:
                observe_requests(self._api, self._on_request)
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self.api.get(_resource(kind), name, namespace=namespace)
        except ApiError as exc:
            if status_code(exc) == 404:
                return None
            raise
        return _plain(found)

    async def list_matching(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` (``*``: every one) matching a label selector."""
        listing = await list_once(self.api, _resource(kind), namespace, labels=selector)
        return listing.items

    async def apply(self, obj: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply ``obj`` as the operator's field manager (force: we own these)."""
        meta = obj["metadata"]
        applied = await self.api.patch(
            _resource(obj["kind"]),
            meta["name"],
            obj,
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=manager,
            force=True,
        )
        return _plain(applied)

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; False when one of that name exists (it is left as it is)."""
        try:
            resource: Any = _resource(obj["kind"])  # from_dict is typed on DictMixin only
            await self.api.create(cast(NamespacedResource, resource.from_dict(obj)))
        except ApiError as exc:
            if status_code(exc) == 409:
                return False
            raise
        return True

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch, of the object or (``sub="status"``) of its status subresource."""
        resource: Any = _resource(kind)
        if sub == "status":
            resource = resource.Status
        elif sub is not None:
            raise ValueError(f"no subresource {sub!r} here; only 'status'")
        patched = await self.api.patch(
            resource, name, patch, namespace=namespace, patch_type=PatchType.MERGE
        )
        return _plain(patched)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.api.delete(_resource(kind), name, namespace=namespace)
        except ApiError as exc:
            if status_code(exc) == 404:
                return False
            raise
        return True

    async def create_event(self, event: dict[str, Any]) -> None:
        await self.api.create(cast(Event, Event.from_dict(event)))


async def post_event(
    kube: Kube, body: dict[str, Any], kind: str, reason: str, message: str
) -> None:
    """A core/v1 Event about ``body``; failing to post one never fails a reconcile."""
    meta = body["metadata"]
    stamp = now_rfc3339()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": body.get("kind", "BhivModule"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await kube.create_event(event)
    except Exception:  # noqa: BLE001 - events are best effort by design
        log.warning(
            "could not post event %s on %s/%s",
            reason,
            meta["namespace"],
            meta["name"],
            exc_info=True,
        )


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def applies_field(obj: dict[str, Any], *path: str) -> bool:
    """Whether our Apply operation owns the field ``path`` (e.g. "spec", "replicas")."""
    for entry in obj.get("metadata", {}).get("managedFields") or ():
        if entry.get("manager") != FIELD_MANAGER or entry.get("operation") != "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}")
            if node is None:
                break
        else:
            return True
    return False
