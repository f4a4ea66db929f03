"""The operator's few calls to the Kubernetes API, on the official client.

Children are written with server-side apply under one field manager, so the
API server merges our intent with other writers' (the HPA's replica count,
kubectl annotations) and reports real conflicts. The client is synchronous;
every call runs in a thread so the operator's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bhiv.operator import FIELD_MANAGER, GROUP, PLURAL, VERSION

log = logging.getLogger("bhiv.operator.kube")

# kind -> (API prefix, plural) for every kind the operator reads or writes.
_PATHS = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Secret": ("/api/v1", "secrets"),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "BhivModule": (f"/apis/{GROUP}/{VERSION}", PLURAL),
}
# Every request carries a timeout: a stuck connection must fail and be
# retried by the work queue rather than hang a worker forever.
REQUEST_TIMEOUT = (5, 30)


def load_config(kubeconfig: str | None = None) -> None:
    """An explicit kubeconfig wins; else in-cluster; else $KUBECONFIG or ~/.kube/config."""
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, body, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method,
            url,
            header_params=headers,
            body=body,
            post_params=post,
            _request_timeout=REQUEST_TIMEOUT,
        )
        raw = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(
                status=response.status, reason=response.reason, body=raw.decode(errors="replace")
            )
        return json.loads(raw) if raw else None

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = _PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self._call, "GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_matching(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` matching a label selector."""
        found = await asyncio.to_thread(
            self._call, "GET", self._path(kind, namespace), query=[("labelSelector", selector)]
        )
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items

    async def apply(self, obj: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply ``obj`` as the operator's field manager (force: we own these)."""
        meta = obj["metadata"]
        return await asyncio.to_thread(
            self._call,
            "PATCH",
            self._path(obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query=[("fieldManager", manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; False when one of that name exists (it is left as it is)."""
        meta = obj["metadata"]
        try:
            path = self._path(obj["kind"], meta["namespace"])
            await asyncio.to_thread(self._call, "POST", path, body=obj)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> Any:
        return await asyncio.to_thread(
            self._call,
            "PATCH",
            self._path(kind, namespace, name, sub),
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await asyncio.to_thread(self._call, "DELETE", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


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
        await asyncio.to_thread(
            kube._call, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event
        )
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
