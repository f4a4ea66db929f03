"""The watches' cache: what a child's change means for its module's reconcile."""

from __future__ import annotations

from typing import Any

from bhiv.operator.cache import Cache, owned, slim_module


def child(kind: str, name: str, *, uid: str = "u", **more: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "ownerReferences": [
                {"apiVersion": "bhiv.io/v1alpha1", "kind": "BhivModule", "name": name}
            ],
            "managedFields": [
                {"manager": "bhiv-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
                {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {}},
            ],
        },
        **more,
    }


def test_a_listing_replaces_what_was_known_and_names_the_owners_it_touched() -> None:
    cache = Cache()
    assert cache.replace_children(
        "Service", "ns", [child("Service", "a"), child("Service", "b")]
    ) == {
        ("ns", "a"),
        ("ns", "b"),
    }
    # b was deleted while no watch ran, c created, a unchanged.
    assert cache.replace_children(
        "Service", "ns", [child("Service", "a"), child("Service", "c")]
    ) == {
        ("ns", "b"),
        ("ns", "c"),
    }
    assert cache.child("Service", "ns", "b") is None
    assert cache.child("Service", "ns", "a") is not None


def test_only_what_a_reconcile_reads_makes_a_change() -> None:
    cache = Cache()
    assert cache.put_child("HorizontalPodAutoscaler", child("HorizontalPodAutoscaler", "a")) == "a"
    busy = child("HorizontalPodAutoscaler", "a", status={"currentReplicas": 3})
    assert cache.put_child("HorizontalPodAutoscaler", busy) is None
    recreated = child("HorizontalPodAutoscaler", "a", uid="u2")
    assert cache.put_child("HorizontalPodAutoscaler", recreated) == "a"
    # A Deployment's status is what its module's Ready reports.
    assert cache.put_child("Deployment", child("Deployment", "a")) == "a"
    ready = child("Deployment", "a", status={"readyReplicas": 1})
    assert cache.put_child("Deployment", ready) == "a"
    seen = cache.child("Deployment", "ns", "a")
    assert seen is not None and seen.body is not None
    assert seen.body["status"] == {"readyReplicas": 1}


def test_the_owned_fingerprint_follows_only_the_operators_apply() -> None:
    a = child("Deployment", "a")
    b = child("Deployment", "a")
    b["metadata"]["managedFields"][1]["fieldsV1"] = {"f:spec": {"f:replicas": {}}}
    assert owned(a) == owned(b)  # another manager's fields
    b["metadata"]["managedFields"][0]["fieldsV1"] = {"f:metadata": {}}
    assert owned(a) != owned(b)  # ours moved


def test_a_cached_module_leaves_out_what_the_reconcile_never_reads() -> None:
    body = child("BhivModule", "a")
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "team": "x",
    }
    slim = slim_module(body)
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {"team": "x"}
    assert "managedFields" in body["metadata"]  # the watch's copy is left as it is
