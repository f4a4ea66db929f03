"""Why a module's pods do not run, from its Deployment and pods (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from bhiv.operator import stuck

pytestmark = pytest.mark.unit


def pod(name: str = "shop-1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str = "", **container: Any) -> dict[str, Any]:
    return {
        "name": "logistics",
        "state": {"waiting": {"reason": reason, "message": message}},
        **container,
    }


def test_a_missing_service_account_is_the_deployments_replica_failure() -> None:
    deployment = {
        "status": {
            "conditions": [
                {"type": "Available", "status": "False"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "gateway-1" is forbidden: error looking up service account '
                    'shop/bhiv-gateway: serviceaccount "bhiv-gateway" not found',
                },
            ]
        }
    }
    found = stuck.replica_failure(deployment)
    assert found is not None and found.reason == "FailedCreate"
    assert 'serviceaccount "bhiv-gateway" not found' in found.message
    assert (
        stuck.replica_failure(
            {"status": {"conditions": [{"type": "ReplicaFailure", "status": "False"}]}}
        )
        is None
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImagePull", 'failed to pull "registry.example/bhiv:9": not found'),
        ("ImagePullBackOff", 'Back-off pulling image "registry.example/bhiv:9"'),
        ("CreateContainerConfigError", 'secret "db" not found'),
    ],
)
def test_container_problems_name_the_pod_and_say_what_happened(reason: str, message: str) -> None:
    found = stuck.pod_problem([pod(containerStatuses=[waiting(reason, message)])])
    assert found == stuck.Stuck(reason, f"pod shop-1: {message}")


def test_a_crash_loop_says_how_the_container_last_exited() -> None:
    container = waiting(
        "CrashLoopBackOff",
        "back-off 10s restarting failed container=crm",
        lastState={"terminated": {"exitCode": 78, "reason": "Error"}},
        restartCount=4,
    )
    found = stuck.pod_problem([pod(containerStatuses=[container])])
    assert found is not None and found.reason == "CrashLoopBackOff"
    assert "exited with code 78" in found.message and "restarted 4 times" in found.message


def test_an_unschedulable_pod_quotes_the_scheduler() -> None:
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
    }
    found = stuck.pod_problem([pod(conditions=[cond])])
    assert found is not None and found.reason == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in found.message


def test_starting_and_terminating_pods_are_not_problems() -> None:
    starting = pod(containerStatuses=[waiting("ContainerCreating")])
    leaving = pod("shop-0", containerStatuses=[waiting("CrashLoopBackOff")])
    leaving["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    assert stuck.pod_problem([starting, leaving]) is None
    assert stuck.pod_problem([]) is None
