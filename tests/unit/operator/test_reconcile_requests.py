"""Which API requests a reconcile makes, on an in-memory stand-in for the API server
that records them: a module in a steady state costs no DELETE per pass, and, with
its children in the watches' cache, no request at all."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from bhiv.operator.cache import Cache
from bhiv.operator.graph import Node
from bhiv.operator.handlers import CHILDREN
from bhiv.operator.reconcile import Reconciler


class RecordingKube:
    """Objects by (kind, namespace, name); every call recorded as (verb, kind)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}  # the last status written

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("GET", kind))
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    async def apply(self, obj: dict[str, Any], manager: str = "") -> dict[str, Any]:
        self.calls.append(("APPLY", obj["kind"]))
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        old = self.objects.get(key) or {}
        # As an API server: the generation counts changes of the spec.
        generation = int(old.get("metadata", {}).get("generation") or 0)
        if obj.get("spec") != old.get("spec"):
            generation += 1
        obj = {**obj, "metadata": {**obj["metadata"], "generation": generation}}
        # As an API server: an apply leaves the status as it is.
        self.objects[key] = {
            **copy.deepcopy(obj),
            **({"status": old["status"]} if "status" in old else {}),
        }
        return copy.deepcopy(self.objects[key])

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(("DELETE", kind))
        return self.objects.pop((kind, namespace, name), None) is not None

    async def list_matching(self, kind: str, namespace: str, selector: str) -> list[Any]:
        self.calls.append(("LIST", kind))
        return []

    async def merge_patch(
        self, kind: str, namespace: str, name: str, patch: Any, sub: Any = None
    ) -> None:
        self.calls.append(("PATCH", kind))
        self.status = copy.deepcopy(patch["status"])


def _body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "shop", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"service": "logistics", "image": "bhiv-core:1", **spec},
    }


async def _no_events(*_: Any) -> None:
    return None


def _reconcile(reconciler: Reconciler, kube: RecordingKube, body: dict[str, Any]) -> set[str]:
    kube.calls.clear()
    asyncio.run(reconciler.reconcile(body, {"shop": Node((), False)}))
    return {kind for verb, kind in kube.calls if verb == "DELETE"}


def test_absent_optional_children_are_deleted_once_not_per_pass() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube, _no_events)  # type: ignore[arg-type]
    body = _body()  # no NetworkPolicy, autoscaling or second pod: none of the three
    first = _reconcile(reconciler, kube, body)
    assert first == {"NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert _reconcile(reconciler, kube, body) == set()


def test_a_child_applied_again_is_deleted_again_when_switched_off() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube, _no_events)  # type: ignore[arg-type]
    _reconcile(reconciler, kube, _body(networkPolicy={"enabled": True}))
    policy = ("NetworkPolicy", "ns", "shop")
    assert policy in kube.objects
    assert _reconcile(reconciler, kube, _body(networkPolicy={"enabled": False})) == {
        "NetworkPolicy"
    }
    assert policy not in kube.objects
    _reconcile(reconciler, kube, _body(networkPolicy={"enabled": True}))
    assert policy in kube.objects
    assert _reconcile(reconciler, kube, _body(networkPolicy={"enabled": False})) == {
        "NetworkPolicy"
    }
    assert policy not in kube.objects


# A Deployment whose one pod runs: its module is Ready, and nothing more is read about it.
ROLLED_OUT = {
    "replicas": 1,
    "readyReplicas": 1,
    "updatedReplicas": 1,
    "observedGeneration": 1,
    "conditions": [{"type": "Available", "status": "True"}],
}


def _deliver(kube: RecordingKube, cache: Cache) -> None:
    """What the children's watches would list: every child the stand-in holds, a
    Deployment rolled out."""
    for (kind, _, _), obj in kube.objects.items():
        if kind == "Deployment":
            obj["status"] = ROLLED_OUT
    for kind in CHILDREN:
        objs = [obj for (k, _, _), obj in kube.objects.items() if k == kind]
        cache.replace_children(kind, "ns", objs)


def _steady(**spec: Any) -> tuple[Reconciler, RecordingKube, Cache, dict[str, Any]]:
    """A module reconciled once, its children and status seen by the watches."""
    kube, cache = RecordingKube(), Cache()
    reconciler = Reconciler(kube, _no_events, cache=cache)  # type: ignore[arg-type]
    body = _body(**spec)
    asyncio.run(reconciler.reconcile(body, {"shop": Node((), False)}))
    _deliver(kube, cache)
    asyncio.run(reconciler.reconcile({**body, "status": kube.status}, {"shop": Node((), False)}))
    return reconciler, kube, cache, {**body, "status": kube.status}


def _calls(reconciler: Reconciler, kube: RecordingKube, body: dict[str, Any]) -> list[Any]:
    kube.calls.clear()
    asyncio.run(reconciler.reconcile(body, {"shop": Node((), False)}))
    return kube.calls


def test_a_module_in_a_steady_state_costs_no_request() -> None:
    for spec in ({}, {"networkPolicy": {"enabled": True}}, {"storage": {"ephemeral": True}}):
        reconciler, kube, _, body = _steady(**spec)
        assert _calls(reconciler, kube, body) == [], spec


def test_a_changed_spec_applies_only_what_it_changes() -> None:
    reconciler, kube, _, body = _steady()
    changed = {**body, "spec": {**body["spec"], "image": "bhiv-core:2"}}
    # The Deployment, and the status saying it rolls out (its pods are not read before
    # its controller has seen the new spec).
    assert _calls(reconciler, kube, changed) == [("APPLY", "Deployment"), ("PATCH", "BhivModule")]


def test_a_deleted_child_is_applied_again() -> None:
    reconciler, kube, cache, body = _steady()
    del kube.objects[("Service", "ns", "shop")]
    _deliver(kube, cache)
    assert _calls(reconciler, kube, body) == [("APPLY", "Service")]


def test_a_child_whose_owned_fields_someone_took_is_applied_again() -> None:
    """kubectl set image moves the image field's ownership away from the operator."""
    reconciler, kube, cache, body = _steady()
    edited = copy.deepcopy(kube.objects[("Deployment", "ns", "shop")])
    edited["metadata"]["managedFields"] = [
        {"manager": "bhiv-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}
    ]
    cache.put_child("Deployment", {**edited, "status": ROLLED_OUT})
    assert _calls(reconciler, kube, body) == [("APPLY", "Deployment")]
    _deliver(kube, cache)
    assert _calls(reconciler, kube, body) == []


def test_a_new_module_asks_nothing_of_a_listed_cache() -> None:
    """Once a listing filled the cache, a child it lacks does not exist: no GET of the
    Deployment, no DELETE of the HPA, PDB or NetworkPolicy the module does not want."""
    kube, cache = RecordingKube(), Cache()
    cache.listed = True
    reconciler = Reconciler(kube, _no_events, cache=cache)  # type: ignore[arg-type]
    calls = _calls(reconciler, kube, _body(storage={"ephemeral": True}))
    assert calls == [("APPLY", "Service"), ("APPLY", "Deployment"), ("PATCH", "BhivModule")]
    # Switched off after the operator applied it, a child is deleted, seen or not yet.
    with_policy = _body(storage={"ephemeral": True}, networkPolicy={"enabled": True})
    assert ("APPLY", "NetworkPolicy") in _calls(reconciler, kube, with_policy)
    calls = _calls(reconciler, kube, _body(storage={"ephemeral": True}))
    assert ("DELETE", "NetworkPolicy") in calls
