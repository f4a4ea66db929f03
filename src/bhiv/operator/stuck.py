"""Why a module's pods are not running: read from its Deployment and its pods.

A Deployment says only "0 of 2 ready"; the reason is elsewhere — in its
``ReplicaFailure`` condition when pods cannot even be created (a quota, an
admission webhook, a missing ServiceAccount), or in the pods themselves (an image
that cannot be pulled, a container that keeps crashing, no node that fits). The
module's ``Ready`` condition carries the first such reason, and it is posted as a
Warning event, so ``kubectl get bm`` and ``kubectl describe bm`` say what is wrong.
Pure functions: the reconciler fetches the objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Container waiting reasons that will not clear by waiting a little longer.
CONTAINER_PROBLEMS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)
REASONS = frozenset({"FailedCreate", "Unschedulable", *CONTAINER_PROBLEMS})


@dataclass(frozen=True)
class Stuck:
    reason: str
    message: str


def replica_failure(deployment: dict[str, Any]) -> Stuck | None:
    """Pods that cannot be created: the Deployment's ReplicaFailure condition."""
    for cond in (deployment.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Stuck(str(cond.get("reason") or "FailedCreate"), str(cond.get("message") or ""))
    return None


def pod_problem(pods: list[dict[str, Any]]) -> Stuck | None:
    """The first pod problem worth a person's attention, or None."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp"):
            continue  # on its way out: what it says no longer matters
        for cond in status.get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return Stuck(
                    "Unschedulable", f"pod {name}: {cond.get('message') or 'no node fits'}"
                )
        for container in status.get("containerStatuses") or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in CONTAINER_PROBLEMS:
                # A crash loop's own message is only "back-off ... restarting"; how the
                # container last ended says more.
                first = _last_exit(container) if reason == "CrashLoopBackOff" else ""
                detail = first or waiting.get("message") or reason
                return Stuck(reason, f"pod {name}: {detail}")
    return None


def _last_exit(container: dict[str, Any]) -> str:
    ended = (container.get("lastState") or {}).get("terminated") or {}
    if not ended:
        return ""
    return (
        f"container {container.get('name')} exited with code {ended.get('exitCode')}"
        f" ({ended.get('reason') or 'Error'}), restarted {container.get('restartCount', 0)} times"
    )
