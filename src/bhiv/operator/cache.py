"""What the operator's watches last said about its modules and their children.

A reconcile reads the module and its children from here instead of asking the API
server, and a child whose desired manifest and the fields the operator owns in it
are both unchanged since the operator last applied it is not applied again: a
steady-state resync of every module sends no request at all (docs/operator.md).

Kept small, because the operator holds one entry per module and child: a module's
body without its managedFields, and of a child only its uid, a fingerprint of the
fields the operator's apply owns and, for a Deployment, what the reconcile reads
(its replicas, status and the operator's own managedFields entry).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bhiv.operator import FIELD_MANAGER

# kubectl apply's copy of the whole object: as large as the object, read by nobody here.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Key = tuple[str, str, str]  # (kind, namespace, name)


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _ours(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry
        for entry in (obj.get("metadata") or {}).get("managedFields") or ()
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"
    ]


def owned(obj: dict[str, Any]) -> str:
    """A fingerprint of the fields the operator's apply owns in ``obj``.

    The API server moves a field's ownership to whoever changes its value (kubectl
    edit, scale or set image, another applier forcing it), and drops a field anybody
    removes from every owner: so while the fingerprint is unchanged, every field the
    operator applied still holds the value it applied. (The entry's time is left
    out: it is only when the operator last changed something.)
    """
    return digest(
        [(e.get("apiVersion"), e.get("subresource"), e.get("fieldsV1")) for e in _ours(obj)]
    )


@dataclass(frozen=True)
class Child:
    """One child as its watch last delivered it."""

    uid: str
    owned: str
    owner: str | None  # the BhivModule it belongs to
    # Deployments only: what the reconcile reads of one (see slim_deployment).
    body: dict[str, Any] | None = None

    @classmethod
    def of(cls, kind: str, obj: dict[str, Any]) -> Child:
        meta = obj.get("metadata") or {}
        body = slim_deployment(obj) if kind == "Deployment" else None
        return cls(str(meta.get("uid") or ""), owned(obj), owner_of(obj), body)


def slim_deployment(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Deployment its module's status and the replica handover read."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion", "apps/v1"),
        "kind": "Deployment",
        "metadata": {
            **{k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta},
            "managedFields": _ours(obj),
        },
        "spec": {k: v for k, v in (obj.get("spec") or {}).items() if k == "replicas"},
        "status": obj.get("status") or {},
    }


def slim_module(obj: dict[str, Any]) -> dict[str, Any]:
    """A BhivModule without what the reconcile never reads (managedFields, kubectl's copy)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**obj, "metadata": meta}


def owner_of(obj: dict[str, Any]) -> str | None:
    """The name of the BhivModule that owns ``obj`` (its controller reference), if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == "BhivModule" and str(ref.get("apiVersion", "")).startswith(
            "bhiv.io/"
        ):
            return str(ref.get("name"))
    return None


class Cache:
    """Modules by (namespace, name) and children by (kind, namespace, name)."""

    def __init__(self) -> None:
        self._modules: dict[tuple[str, str], dict[str, Any]] = {}
        self._children: dict[Key, Child] = {}
        # Once a listing of every kind of child has filled it, a child it does not
        # hold does not exist (the watches deliver those made since).
        self.listed = False

    def module(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._modules.get((namespace, name))

    def put_module(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._modules[(meta["namespace"], meta["name"])] = slim_module(obj)

    def drop_module(self, namespace: str, name: str) -> None:
        self._modules.pop((namespace, name), None)

    def child(self, kind: str, namespace: str, name: str) -> Child | None:
        return self._children.get((kind, namespace, name))

    def put_child(self, kind: str, obj: dict[str, Any]) -> str | None:
        """Record ``obj``; its owner when what the reconcile reads of it changed.

        A child's status matters only for a Deployment: an HPA's or a Service's
        status updates change nothing recorded, so they cost no reconcile."""
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        new = Child.of(kind, obj)
        old = self._children.get(key)
        self._children[key] = new
        return new.owner if old != new else None

    def drop_child(self, kind: str, namespace: str, name: str) -> str | None:
        """Forget a deleted child; its owner, if it was recorded."""
        old = self._children.pop((kind, namespace, name), None)
        return old.owner if old is not None else None

    def replace_children(
        self, kind: str, namespace: str | None, objs: list[dict[str, Any]]
    ) -> set[tuple[str, str]]:
        """A fresh listing of ``kind`` in ``namespace`` (None: every namespace) replaces
        what was recorded, including objects deleted while no watch ran; the
        (namespace, owner) of every object that appeared, changed or disappeared."""
        stale = {key for key in self._children if key[0] == kind and namespace in (None, key[1])}
        owners: set[tuple[str, str]] = set()
        for obj in objs:
            meta = obj["metadata"]
            stale.discard((kind, meta["namespace"], meta["name"]))
            owner = self.put_child(kind, obj)
            if owner:
                owners.add((meta["namespace"], owner))
        for key in stale:
            owner = self.drop_child(*key)
            if owner:
                owners.add((key[1], owner))
        return owners
