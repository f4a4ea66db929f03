"""Kopf wiring: watch events name modules to reconcile; a work queue reconciles them.

Only `on.event` handlers are used: they never add finalizers or bookkeeping
annotations, so a deleted module can never be stuck in Terminating, and the
operator's only writes are its server-side applies and status patches.

Kopf's watches of the modules and their children also fill the cache the reconciler
reads them from (bhiv.operator.cache): Kopf pauses them all while a peer of higher
priority acts, so a standby operator is not woken by them. A watch that must list
again (410 Gone) reports no deletions, so every VERIFY_SECONDS the resync lists the
children once (a few reads) and forgets what the listing no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Hashable
from typing import Any, cast

import kopf
from lightkube import ALL_NS

from bhiv.operator import GROUP, PLURAL, VERSION, metrics
from bhiv.operator.builders import MANAGED_BY
from bhiv.operator.cache import Cache, owner_of
from bhiv.operator.graph import Node, Reach, reach
from bhiv.operator.kube import Kube, post_event
from bhiv.operator.reconcile import Reconciler
from bhiv.operator.workqueue import WorkQueue

log = logging.getLogger("bhiv.operator")
RESYNC_SECONDS = 60.0
VERIFY_SECONDS = 600.0
# The children the operator server-side-applies: (group, version, plural) by kind.
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"


# One module as the index keeps it: name, dependsOn, Ready and Ready's reason.
ModuleEntry = tuple[str, tuple[str, ...], bool, str]
# Every module, keyed by namespace (a BhivModule is namespaced, so never None).
ModuleIndex = kopf.Index[str | None, ModuleEntry]


def _ready(status: dict[str, Any]) -> tuple[bool, str]:
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            return cond.get("status") == "True", str(cond.get("reason") or "")
    return False, ""


@kopf.index(GROUP, VERSION, PLURAL)
def bhiv_modules(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str | None, ModuleEntry]:
    """Every module by namespace: what dependency and cycle analysis needs."""
    ready, reason = _ready(dict(status))
    return {namespace: (name, tuple(spec.get("dependsOn") or ()), ready, reason)}


def _nodes(index: ModuleIndex, namespace: str) -> dict[str, Node]:
    return {name: Node(deps, ready) for name, deps, ready, _ in index.get(namespace, ())}


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # An API server (or a proxy in front of it) can silently stop sending
    # events on a long-lived watch without closing it; Kopf would then wait
    # forever. Bounded server- and client-side timeouts make every watch
    # re-list and re-watch at least every few minutes.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 15
    settings.networking.request_timeout = 60
    # Kopf would post every handler log line as a Kubernetes Event; the
    # reconciler posts the transitions that matter itself.
    settings.posting.enabled = False
    settings.peering.mandatory = not getattr(memo, "standalone", True)
    if not getattr(memo, "clusterwide", False):
        # A namespace-scoped operator's Role cannot list CRDs or namespaces
        # cluster-wide; with exact namespace names Kopf needs neither scan.
        settings.scanning.disabled = True

    kube = Kube(on_request=metrics.count_request)
    cache = Cache()

    async def events(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        await post_event(kube, body, kind, reason, message)

    reconciler = Reconciler(
        kube,
        events,
        getattr(memo, "cluster_domain", "cluster.local"),
        tuple(getattr(memo, "allowed_images", ())),
        shared_secret=getattr(memo, "shared_secret", None),
        cache=cache,
    )
    # Kopf gives each object's handlers a shallow copy of this memo: state the
    # handlers must share with the workers lives in one mutable object.
    memo.shared = types.SimpleNamespace(index=None, reach={}, edges={}, cache=cache, kube=kube)

    async def handle(key: Hashable) -> None:
        namespace, name = cast(tuple[str, str], key)
        index: ModuleIndex | None = memo.shared.index
        if index is None:
            raise RuntimeError("the module index is not populated yet")
        # As its watch last delivered it; asked for only if that has not (or it is gone).
        body = cache.module(namespace, name) or await kube.get("BhivModule", namespace, name)
        if body is None:
            return
        started = time.perf_counter()
        try:
            outcome = await reconciler.reconcile(body, _nodes(index, namespace))
        except Exception as exc:
            metrics.reconciles.labels("error").inc()
            metrics.reconcile_errors.labels(_error_reason(exc)).inc()
            raise
        finally:
            metrics.reconcile_seconds.observe(time.perf_counter() - started)
        metrics.reconciles.labels("ok").inc()
        if outcome is not None and outcome.cycle_members:
            # Every member of a cycle reports it, not only the module whose edit closed it.
            reported = {
                n for n, _, _, reason in index.get(namespace, ()) if reason == "DependencyCycle"
            }
            for member in outcome.cycle_members:
                if member != name and member not in reported:
                    memo.queue.add((namespace, member))

    memo.queue = WorkQueue(handle, workers=4, observe_wait=metrics.queue_wait_seconds.observe)
    metrics.queue_depth.set_function(lambda: len(memo.queue))
    metrics.queue_oldest_seconds.set_function(memo.queue.oldest_wait)
    memo.tasks = [asyncio.create_task(_run_queue(memo)), asyncio.create_task(_resync(memo))]


async def _run_queue(memo: kopf.Memo) -> None:
    """List the children once (so that a new module's first reconcile needs not ask
    whether its children exist), then run the reconcile workers."""
    try:
        # Nothing queued: Kopf delivers every module once it is allowed to act (a
        # peer may hold it back), and reconciling before its index exists would fail.
        await _verify_children(memo, requeue=False)
    except Exception:  # noqa: BLE001 - the reconciler asks the API server instead
        log.warning("could not list the children at start-up", exc_info=True)
    await memo.queue.run()


async def _verify_children(memo: kopf.Memo, *, requeue: bool = True) -> None:
    """List every kind of child once and make the cache hold exactly that, queueing
    (``requeue``) the modules whose children it had wrong (deleted or changed while a
    watch listed again)."""
    kube: Kube = memo.shared.kube
    cache: Cache = memo.shared.cache
    clusterwide = getattr(memo, "clusterwide", False)
    for scope in [ALL_NS] if clusterwide else getattr(memo, "namespaces", []):
        for kind in CHILDREN:
            items = await kube.list_matching(kind, scope, CHILD_SELECTOR)
            namespace = None if scope == ALL_NS else scope
            touched = cache.replace_children(kind, namespace, items)
            for key in touched if requeue else ():
                memo.queue.add(key)
    cache.listed = True


def _error_reason(exc: Exception) -> str:
    """A bounded label for a failed reconcile: ``HTTP 409``, ``HTTP 5xx``, or the type.

    An API error carries its HTTP status as ``status`` (an int, or an object with a
    ``code``, depending on the client)."""
    status = getattr(exc, "status", None)
    code = status if isinstance(status, int) else getattr(status, "code", None)
    if isinstance(code, int):
        return f"HTTP {code}" if code < 500 else "HTTP 5xx"
    return type(exc).__name__


async def _resync(memo: kopf.Memo) -> None:
    """A safety net under the watches: requeue everything now and then, and refresh gauges."""
    period = float(getattr(memo, "resync_seconds", RESYNC_SECONDS))
    last_full = last_verified = time.monotonic()
    while True:
        await asyncio.sleep(min(5.0, period))
        index: ModuleIndex | None = memo.shared.index
        if index is None:
            continue
        counts: dict[tuple[str, str], int] = {}
        for namespace in list(index):
            for _name, _deps, ready, reason in index.get(namespace, ()):
                key = ("True" if ready else "False", reason or "Unknown")
                counts[key] = counts.get(key, 0) + 1
        metrics.modules.clear()
        for (ready_text, reason), n in counts.items():
            metrics.modules.labels(ready_text, reason).set(n)
        if time.monotonic() - last_verified >= VERIFY_SECONDS:
            last_verified = time.monotonic()
            try:
                await _verify_children(memo)
            except Exception:  # noqa: BLE001 - the watches still run; the next pass retries
                log.warning("could not list the children to check the cache", exc_info=True)
        if time.monotonic() - last_full >= period:
            last_full = time.monotonic()
            metrics.resyncs.inc()
            for namespace in list(index):
                for name, *_ in index.get(namespace, ()):
                    memo.queue.add((namespace, name))


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", ()):
        task.cancel()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def module_changed(
    name: str,
    namespace: str | None,
    event: kopf.RawEvent,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    # Kopf passes every index by its function's name.
    bhiv_modules: ModuleIndex = kwargs["bhiv_modules"]
    memo.shared.index = bhiv_modules
    cache: Cache = memo.shared.cache
    if event["type"] == "DELETED":
        cache.drop_module(namespace or "", name)
    else:
        cache.put_module(dict(event["object"]))
    queue: WorkQueue = memo.queue
    queue.add((namespace, name))
    # Dependents react to this module's readiness at once (event-driven, not a
    # timer), and modules stuck in a cycle re-check whether it is broken.
    for other, deps, _ready, reason in bhiv_modules.get(namespace, ()):
        if name in deps or reason in ("DependencyCycle", "DependencyNotFound"):
            queue.add((namespace, other))
    # NetworkPolicies follow dependsOn: a changed edge anywhere changes who may call
    # whom, so every module whose dependents or dependencies moved is reconciled. Most
    # events are status updates that move no edge; they skip the namespace-wide reach.
    edges = frozenset((n, deps) for n, deps, _, _ in bhiv_modules.get(namespace, ()))
    if memo.shared.edges.get(namespace) == edges:
        return
    memo.shared.edges[namespace] = edges
    now = reach(_nodes(bhiv_modules, namespace or ""))
    before: dict[str, Reach] = memo.shared.reach.get(namespace, {})
    memo.shared.reach[namespace] = now
    for other, other_reach in now.items():
        if before.get(other, other_reach) != other_reach:
            queue.add((namespace, other))


def _child_handler(kind: str) -> Any:
    async def child_changed(
        event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        """A child was created, changed or deleted: record it, and reconcile its owner
        if the change is one its reconcile reads (not, say, an HPA's status)."""
        shared = getattr(memo, "shared", None)
        if shared is None or not hasattr(memo, "queue"):
            return
        cache: Cache = shared.cache
        obj: dict[str, Any] = dict(event["object"])
        meta: dict[str, Any] = obj.get("metadata") or {}
        if event["type"] == "DELETED":
            owner = cache.drop_child(kind, meta["namespace"], meta["name"]) or owner_of(obj)
        else:
            owner = cache.put_child(kind, obj)
        if owner:
            memo.queue.add((namespace, owner))

    return child_changed


async def _pod_changed(
    labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A module's pod changed (pulling, crashing, unschedulable, ready): re-read why.

    Pods are owned by ReplicaSets, not by the module; the instance label names it.
    """
    module = labels.get("app.kubernetes.io/instance")
    if module and hasattr(memo, "queue"):
        memo.queue.add((namespace, module))


kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})(_pod_changed)

for _kind, (_group, _version, _plural) in CHILDREN.items():
    kopf.on.event(_group, _version, _plural, labels={"app.kubernetes.io/managed-by": MANAGED_BY})(
        _child_handler(_kind)
    )
