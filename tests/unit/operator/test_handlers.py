"""The module event handler's queueing decisions, on a plain index (no API server)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from bhiv.operator import graph, handlers
from bhiv.operator.cache import Cache

# Kopf's decorator types the handler as its own callback protocol (every kwarg Kopf
# passes); called directly, it takes the ones it names.
module_changed: Any = handlers.module_changed


class Queue:
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []

    def add(self, key: tuple[str, str]) -> None:
        self.added.append(key)


def _memo() -> Any:
    shared = types.SimpleNamespace(index=None, reach={}, edges={}, cache=Cache())
    return types.SimpleNamespace(queue=Queue(), shared=shared)


def _event(memo: Any, name: str, *modules: handlers.ModuleEntry) -> set[str]:
    """One BhivModule event for ``name`` with the index holding ``modules``; the
    module names queued for a reconcile."""
    memo.queue.added.clear()
    index = {"ns": list(modules)}
    body = {"metadata": {"name": name, "namespace": "ns"}, "spec": {}}
    event = {"type": "MODIFIED", "object": body}
    asyncio.run(
        module_changed(name=name, namespace="ns", event=event, memo=memo, bhiv_modules=index)
    )
    return {queued for _, queued in memo.queue.added}


def test_a_new_edge_requeues_every_module_whose_reach_moved() -> None:
    memo = _memo()
    assert _event(memo, "a", ("a", (), True, ""), ("b", (), True, ""), ("c", (), True, "")) == {"a"}
    # a now depends on b: b gains a dependent, a a dependency; c is untouched.
    queued = _event(memo, "a", ("a", ("b",), True, ""), ("b", (), True, ""), ("c", (), True, ""))
    assert queued == {"a", "b"}


def test_a_status_change_skips_the_namespace_wide_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counted(nodes: Any) -> dict[str, graph.Reach]:
        calls.append(len(nodes))
        return graph.reach(nodes)

    monkeypatch.setattr(handlers, "reach", counted)
    memo = _memo()
    _event(memo, "a", ("a", ("b",), False, "WaitingForDependencies"), ("b", (), False, ""))
    # b became ready: a (its dependent) is requeued, the edges did not move.
    queued = _event(memo, "b", ("a", ("b",), False, "WaitingForDependencies"), ("b", (), True, ""))
    assert queued == {"a", "b"}
    assert calls == [2]
    # A module deleted moves edges again.
    _event(memo, "b", ("a", ("b",), False, "DependencyNotFound"))
    assert calls == [2, 1]


class _Status:
    code = 409


class _LightkubeStyle(Exception):
    status = _Status()


class _OfficialStyle(Exception):
    status = 503


def test_reconcile_error_reasons_stay_a_small_set() -> None:
    assert handlers._error_reason(_LightkubeStyle()) == "HTTP 409"
    assert handlers._error_reason(_OfficialStyle()) == "HTTP 5xx"
    assert handlers._error_reason(TimeoutError()) == "TimeoutError"


def _child(kind: str, name: str, **more: Any) -> dict[str, Any]:
    owner = {"apiVersion": "bhiv.io/v1alpha1", "kind": "BhivModule", "name": name}
    meta = {"name": name, "namespace": "ns", "uid": "u", "ownerReferences": [owner]}
    return {"kind": kind, "metadata": meta, **more}


def test_a_child_event_queues_its_module_only_for_what_its_reconcile_reads() -> None:
    memo = _memo()

    def event(kind: str, type_: str, obj: dict[str, Any]) -> set[str]:
        memo.queue.added.clear()
        handler = handlers._child_handler(kind)
        asyncio.run(handler(event={"type": type_, "object": obj}, namespace="ns", memo=memo))
        return {name for _, name in memo.queue.added}

    hpa = _child("HorizontalPodAutoscaler", "a")
    assert event("HorizontalPodAutoscaler", "ADDED", hpa) == {"a"}
    busy = _child("HorizontalPodAutoscaler", "a", status={"currentReplicas": 2})
    assert event("HorizontalPodAutoscaler", "MODIFIED", busy) == set()
    assert event("HorizontalPodAutoscaler", "DELETED", busy) == {"a"}
    assert memo.shared.cache.child("HorizontalPodAutoscaler", "ns", "a") is None
    assert event("Deployment", "ADDED", _child("Deployment", "b")) == {"b"}
    rolled = _child("Deployment", "b", status={"readyReplicas": 1})
    assert event("Deployment", "MODIFIED", rolled) == {"b"}


def test_the_verifying_listing_forgets_children_a_watch_missed_the_deletion_of() -> None:
    class Lister:
        async def list_matching(self, kind: str, namespace: str, selector: str) -> list[Any]:
            assert selector == handlers.CHILD_SELECTOR
            return [_child(kind, "kept")]

    memo = _memo()
    memo.namespaces = ["ns"]
    memo.shared.kube = Lister()
    cache = memo.shared.cache
    cache.put_child("Service", _child("Service", "kept"))
    cache.put_child("Service", _child("Service", "gone"))
    asyncio.run(handlers._verify_children(memo))
    assert cache.child("Service", "ns", "gone") is None
    # gone's module is reconciled (its Service is applied again); kept's is queued only
    # for the kinds it had not been seen with.
    queued = memo.queue.added
    assert ("ns", "gone") in queued
    assert queued.count(("ns", "kept")) == len(handlers.CHILDREN) - 1
