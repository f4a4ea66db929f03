"""Which API requests a reconcile makes, on an in-memory stand-in for the API server
that records them: a module in a steady state costs no DELETE per pass."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from bhiv.operator.graph import Node
from bhiv.operator.reconcile import Reconciler


class RecordingKube:
    """Objects by (kind, namespace, name); every call recorded as (verb, kind)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("GET", kind))
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    async def apply(self, obj: dict[str, Any], manager: str = "") -> dict[str, Any]:
        self.calls.append(("APPLY", obj["kind"]))
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(obj)
        return copy.deepcopy(obj)

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
