"""One module's reconcile: read the world, decide, apply, report.

Level-based: it never asks what changed, only what should exist now, so a
restarted operator (or one killed half-way) converges by running it again.

It reads the module's children from the watches' cache (bhiv.operator.cache) and
applies a child only when its manifest or the fields the operator owns in it
changed since its last apply: a module in a steady state costs no request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bhiv.kube import ApiError, status_code
from bhiv.operator import builders, images, stuck
from bhiv.operator.bootstrap import ensure_shared_secret
from bhiv.operator.cache import Cache, Key, digest, owned
from bhiv.operator.graph import DependencyState, Node, cycles, dependency_state, reach_of
from bhiv.operator.kube import Kube, applies_field
from bhiv.operator.model import Module
from bhiv.operator.status import Condition, merge_conditions, transitions

log = logging.getLogger("bhiv.operator.reconcile")

HANDOFF_MANAGER = "bhiv-operator-handoff"
WARNING_REASONS = frozenset(
    {
        "DependencyCycle",
        "DependencyNotFound",
        "ProgressDeadlineExceeded",
        images.REASON,
        *stuck.REASONS,
    }
)
EventSink = Callable[
    [dict[str, Any], str, str, str], Awaitable[None]
]  # (body, type, reason, message)


@dataclass(frozen=True)
class Outcome:
    ready: bool
    reason: str
    cycle_members: tuple[str, ...] = ()


def _deployment_conditions(
    deployment: dict[str, Any],
) -> tuple[Condition, Condition, Condition, int, int]:
    """Available, Progressing and Ready from a Deployment, plus (desired, ready) counts."""
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    dconds = {c["type"]: c for c in st.get("conditions") or ()}

    available_ok = dconds.get("Available", {}).get("status") == "True"
    available = Condition(
        "Available",
        available_ok,
        "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
        f"{ready} of {desired} pods ready",
    )
    current = int(st.get("observedGeneration") or 0) >= int(
        deployment["metadata"].get("generation") or 0
    )
    rolled_out = current and updated == desired and total == desired and ready >= desired
    if dconds.get("Progressing", {}).get("reason") == "ProgressDeadlineExceeded":
        progressing = Condition(
            "Progressing",
            False,
            "ProgressDeadlineExceeded",
            dconds["Progressing"].get("message", ""),
        )
    elif rolled_out:
        progressing = Condition(
            "Progressing", False, "RolloutComplete", f"{desired} pods run the current spec"
        )
    else:
        progressing = Condition(
            "Progressing", True, "RollingOut", f"{updated} of {desired} pods updated, {ready} ready"
        )

    if desired == 0:
        ready_cond = Condition("Ready", False, "ScaledToZero", "the module runs no pods")
    elif rolled_out and available_ok:
        ready_cond = Condition(
            "Ready", True, "AllReplicasReady", f"{ready} of {desired} pods ready"
        )
    else:
        ready_cond = Condition(
            "Ready",
            False,
            progressing.reason if progressing.status else "ReplicasNotReady",
            f"{ready} of {desired} pods ready",
        )
    return available, progressing, ready_cond, desired, ready


def _all_ready(deployment: dict[str, Any] | None) -> bool:
    if deployment is None:
        return False
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    return int((deployment.get("status") or {}).get("readyReplicas") or 0) >= desired


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        events: EventSink,
        cluster_domain: str = "cluster.local",
        allowed_images: tuple[str, ...] = (),
        shared_secret: str | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.kube = kube
        # Filled by the operator's watches; an empty one makes every read a GET.
        self.cache = cache if cache is not None else Cache()
        self.events = events
        self.cluster_domain = cluster_domain
        self.allowed_images = allowed_images
        # --shared-secret: the Secret of shared secrets to create in each namespace
        # with modules (manifests/ users; the chart makes its own and leaves it unset).
        self.shared_secret = shared_secret
        self._secret_namespaces: set[str] = set()
        # Optional children (HPA, PDB, NetworkPolicy) known to be absent: a module
        # without one costs a DELETE the first time, not one per reconcile. Only this
        # operator creates them, and it forgets the fact as soon as it applies one.
        self._absent: set[Key] = set()
        # Per child, what its last apply sent and got back: (manifest digest, uid,
        # owned fingerprint). While the watched child still has that uid and
        # fingerprint, applying the same manifest again would change nothing.
        self._applied: dict[Key, tuple[str, str, str]] = {}
        # Data claims known to exist, by (namespace, claim, module uid).
        self._claims: set[tuple[str, str, str]] = set()

    async def reconcile(self, body: dict[str, Any], nodes: Mapping[str, Node]) -> Outcome | None:
        """Bring one module's children and status in line with its spec.

        ``nodes`` are all modules of its namespace (from the operator's index),
        for dependency and cycle analysis.
        """
        if body["metadata"].get("deletionTimestamp"):
            return None  # garbage collection removes the children through owner references
        module = Module.from_body(body)
        cycle_map = cycles(nodes) if module.name in nodes else {}
        deps = (
            dependency_state(module.name, nodes, cycle_map)
            if module.name in nodes
            else DependencyState(not module.depends_on, "Unknown", "not indexed yet", ())
        )
        deployment = await self._deployment(module)
        # An image outside the allow-list never reaches a Deployment: none is
        # created, and an existing one keeps the pods (and image) it has.
        image_refused = images.refusal(module.image, self.allowed_images)

        if not module.paused:
            if self.shared_secret and module.namespace not in self._secret_namespaces:
                # Once per namespace and operator process, before any pod that reads it.
                await ensure_shared_secret(self.kube, module.namespace, self.shared_secret)
                self._secret_namespaces.add(module.namespace)
            await self._apply(builders.build_service(module))
            await self._apply_network_policy(module, nodes)
            # Startup order: no Deployment (hence no pods, HPA or PDB) until every
            # dependency is Ready. Creating nothing, rather than a Deployment at 0
            # replicas, keeps a waiting module inert and unambiguous: no autoscaler
            # can scale it up early, and `kubectl get deploy` shows only what runs.
            # Once started, a module keeps running even if a dependency later
            # becomes unready; that is reported in DependenciesReady, not acted on.
            if image_refused is None and (deps.satisfied or deployment is not None):
                deployment = await self._apply_workloads(module, deployment)

        problem = await self._why_stuck(module, deployment)
        status = self._status(body, module, deps, deployment, image_refused, problem)
        await self._write_status(body, status)
        ready_cond = next(c for c in status["conditions"] if c["type"] == "Ready")
        return Outcome(
            ready_cond["status"] == "True", ready_cond["reason"], cycle_map.get(module.name, ())
        )

    async def _deployment(self, module: Module) -> dict[str, Any] | None:
        """The module's Deployment as its watch last saw it; asked for only when it may
        exist unseen."""
        key = ("Deployment", module.namespace, module.name)
        seen = self.cache.child(*key)
        if seen is not None and seen.body is not None:
            return seen.body
        if not self._may_exist(key):
            return None
        return await self.kube.get(*key)

    async def _apply(self, child: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply ``child``; None, sending nothing, when that would change nothing.

        That is when the manifest is the one applied last and the watched child is
        the object that apply answered with, its owned fields untouched since
        (bhiv.operator.cache.owned): nobody deleted, recreated or edited them.
        """
        meta = child["metadata"]
        key = (child["kind"], meta["namespace"], meta["name"])
        want = digest(child)
        seen = self.cache.child(*key)
        if seen is not None and self._applied.get(key) == (want, seen.uid, seen.owned):
            return None
        applied = await self.kube.apply(child)
        self._applied[key] = (want, str(applied["metadata"].get("uid") or ""), owned(applied))
        return applied

    async def _apply_network_policy(self, module: Module, nodes: Mapping[str, Node]) -> None:
        """The module's NetworkPolicy, before any pod: it follows dependsOn everywhere in
        the namespace (the handlers requeue a module whose dependents change)."""
        if not module.network_policy.enabled:
            await self._delete_optional("NetworkPolicy", module.namespace, module.name)
            return
        mine = reach_of(module.name, nodes)
        policy = builders.build_network_policy(module, mine.dependents, mine.dependencies)
        if policy is not None:
            await self._apply_optional(policy)

    async def _apply_workloads(
        self, module: Module, deployment: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        ns, name = module.namespace, module.name
        claim = builders.build_data_claim(module)
        # Created once, before the pods that mount it, and then left alone: a claim's
        # spec is immutable but for growing, which its class may refuse, so a later
        # change of spec.storage must not fail every reconcile (resize the claim
        # itself). Never deleted here either: switching to a database keeps the old
        # SQLite data until the module is deleted.
        # Known to exist once seen, while the module's pods all run: they mount it, and
        # a claim in use is only deleted once they stop (its protection finalizer).
        if claim is not None:
            known = (ns, claim["metadata"]["name"], module.uid)
            if known not in self._claims or not _all_ready(deployment):
                if await self.kube.get("PersistentVolumeClaim", *known[:2]) is None:
                    await self.kube.apply(claim)
                self._claims.add(known)
        hpa = builders.build_hpa(module)
        if hpa is not None:
            if deployment is not None and applies_field(deployment, "spec", "replicas"):
                # Hand spec.replicas over to the HPA without a dip, as the
                # Kubernetes docs prescribe: a second applier first co-owns the
                # current count, so dropping it from our own config does not
                # reset it to the default of 1; the HPA's updates then take it.
                current = int((deployment.get("spec") or {}).get("replicas", 1))
                await self.kube.apply(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {"replicas": current},
                    },
                    manager=HANDOFF_MANAGER,
                )
            applied = await self._apply(builders.build_deployment(module, replicas=None))
            await self._apply_optional(hpa)
        else:
            applied = await self._apply(builders.build_deployment(module, replicas=module.replicas))
            await self._delete_optional("HorizontalPodAutoscaler", ns, name)
        pdb = builders.build_pdb(module)
        if pdb is not None:
            await self._apply_optional(pdb)
        else:
            await self._delete_optional("PodDisruptionBudget", ns, name)
        if applied is not None:
            return applied
        seen = self.cache.child("Deployment", ns, name)  # unchanged: as the watch last saw it
        return seen.body if seen is not None and seen.body is not None else deployment

    async def _apply_optional(self, child: dict[str, Any]) -> None:
        meta = child["metadata"]
        self._absent.discard((child["kind"], meta["namespace"], meta["name"]))
        await self._apply(child)

    async def _delete_optional(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        if key in self._absent:
            return
        if not self._may_exist(key):
            self._absent.add(key)
            return
        await self.kube.delete(kind, namespace, name)
        self._absent.add(key)
        self._applied.pop(key, None)

    def _may_exist(self, key: Key) -> bool:
        """Whether a child the cache does not hold may exist all the same: when the
        cache has not been filled by a listing yet, or this process applied the child
        and its watch has not delivered it yet. (Only the operator makes children.)"""
        return not self.cache.listed or key in self._applied or self.cache.child(*key) is not None

    async def _why_stuck(
        self, module: Module, deployment: dict[str, Any] | None
    ) -> stuck.Stuck | None:
        """What keeps a started module's pods from running, if anything does.

        Pods are read only while the Deployment is short of ready pods, so a healthy
        module costs no extra request; and not before its controller has seen the
        current spec (a Deployment just applied): until then its pods are the old
        spec's, and that controller's status update brings the module back here.
        """
        if deployment is None:
            return None
        failure = stuck.replica_failure(deployment)
        if failure is not None:
            return failure
        spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
        if int(st.get("readyReplicas") or 0) >= int(spec.get("replicas", 1)):
            return None
        generation = int((deployment.get("metadata") or {}).get("generation") or 0)
        if int(st.get("observedGeneration") or 0) < generation:
            return None
        pods = await self.kube.list_matching(
            "Pod", module.namespace, builders.selector_string(module)
        )
        return stuck.pod_problem(pods)

    def _status(
        self,
        body: dict[str, Any],
        module: Module,
        deps: DependencyState,
        deployment: dict[str, Any] | None,
        image_refused: str | None = None,
        problem: stuck.Stuck | None = None,
    ) -> dict[str, Any]:
        dep_cond = Condition("DependenciesReady", deps.satisfied, deps.reason, deps.message)
        if deployment is None:
            waiting = "the module is paused" if module.paused else deps.message
            reason = "Paused" if module.paused else deps.reason
            conditions = [
                Condition("Ready", False, reason, waiting),
                dep_cond,
                Condition("Available", False, "NotStarted", "no pods run yet: " + waiting),
                Condition("Progressing", False, reason, waiting),
            ]
            desired = ready = 0
        else:
            available, progressing, ready_cond, desired, ready = _deployment_conditions(deployment)
            if module.paused:
                progressing = Condition(
                    "Progressing",
                    False,
                    "Paused",
                    "the operator leaves this module's workloads as they are",
                )
            if problem is not None and not ready_cond.status:
                ready_cond = Condition("Ready", False, problem.reason, problem.message)
            conditions = [ready_cond, dep_cond, available, progressing]
        if image_refused and not module.paused:
            refused = {
                t: Condition(t, False, images.REASON, image_refused)
                for t in ("Ready", "Progressing")
            }
            conditions = [refused.get(c.type, c) for c in conditions]
        previous = (body.get("status") or {}).get("conditions") or []
        replicas = int(((deployment or {}).get("status") or {}).get("replicas") or 0)
        return {
            "observedGeneration": module.generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "replicasReady": f"{ready}/{desired}",
            "selector": builders.selector_string(module),
            "url": builders.service_url(module, self.cluster_domain),
            "waitingFor": list(deps.waiting_for),
            "conditions": merge_conditions(previous, conditions, module.generation),
        }

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        old = body.get("status") or {}
        if old == status:
            return
        meta = body["metadata"]
        try:
            await self.kube.merge_patch(
                "BhivModule", meta["namespace"], meta["name"], {"status": status}, sub="status"
            )
        except ApiError as exc:
            if status_code(exc) == 404:
                # Deleted while we reconciled it: nothing left to report on, nor to remember.
                self.cache.drop_module(meta["namespace"], meta["name"])
                return
            raise
        for cond in transitions(old.get("conditions") or [], status["conditions"]):
            if cond["type"] in ("Ready", "DependenciesReady") or cond["reason"] in WARNING_REASONS:
                kind = "Warning" if cond["reason"] in WARNING_REASONS else "Normal"
                await self.events(
                    body,
                    kind,
                    cond["reason"],
                    f"{cond['type']}={cond['status']}: {cond['message']}",
                )
