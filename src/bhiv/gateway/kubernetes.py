"""Kubernetes discovery: the BhivModules in the gateway's namespace, watched.

Two layers, so the part with the decisions is testable on plain dicts:

- :class:`ModuleIndex` (pure): applies list results and watch events to the
  set of BhivModules and turns them into routed services. A module routes its
  ``spec.service``'s catalog prefix to ``status.url``; modules of one service
  are that service's instances; a module whose ``Ready`` condition is not True
  stays listed but out of rotation (its routes answer 503, not 404).
- :class:`BhivModuleWatcher` (I/O): a task on the event loop that follows
  :func:`bhiv.kube.list_watch` (list, watch, relist on 410 Gone or after errors,
  with backoff) and hands each new service list to ``publish``.

The gateway needs only ``get``, ``list`` and ``watch`` on ``bhivmodules`` in
its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from lightkube import AsyncClient

from bhiv import catalog, kube
from bhiv.gateway.registry import DiscoveredService

CONDITION_FIELDS = ("type", "status", "reason", "message", "lastTransitionTime")

log = logging.getLogger("bhiv.gateway.kubernetes")


def serving(status: dict[str, Any]) -> bool | None:
    """Does the module have pods that serve? None when its status does not say yet.

    A ready pod serves: the module's Service sends traffic to ready pods only. The
    Deployment's ``Available`` (mirrored by the operator) is False while it scales
    out (with maxUnavailable 0 it wants every new pod ready) though the pods it had
    still serve. Without ready pods, the operator's ``Available`` condition (the
    Deployment's minimum availability) answers; ``Ready`` also demands that every pod
    runs the current spec, so it is False during every rollout while the old pods
    still serve.
    """
    ready = status.get("readyReplicas")
    if isinstance(ready, int) and ready > 0:
        return True
    conditions = {
        c.get("type"): c.get("status")
        for c in status.get("conditions") or ()
        if isinstance(c, dict)
    }
    for kind in ("Available", "Ready"):
        if kind in conditions:
            return conditions[kind] == "True"
    return None


class ModuleIndex:
    """The BhivModules of one namespace, by name."""

    def __init__(self) -> None:
        self.modules: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None

    def reset(self, items: Iterable[dict[str, Any]], resource_version: str | None) -> None:
        self.modules = {m["metadata"]["name"]: m for m in items if _named(m)}
        self.resource_version = resource_version

    def apply(self, event_type: str, obj: dict[str, Any]) -> bool:
        """Apply one watch event; returns True when the routed services may have changed."""
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if event_type == "BOOKMARK" or not _named(obj):
            return False
        name = obj["metadata"]["name"]
        before = self._routing_view(self.modules.get(name))
        if event_type == "DELETED":
            self.modules.pop(name, None)
        elif event_type in ("ADDED", "MODIFIED"):
            self.modules[name] = obj
        else:
            return False
        return self._routing_view(self.modules.get(name)) != before

    def services(self) -> list[DiscoveredService]:
        urls: dict[str, list[str]] = {}
        ready: dict[str, dict[str, bool]] = {}
        for name in sorted(self.modules):
            view = self._routing_view(self.modules[name])
            if view is None:
                continue
            service, url, is_ready = view
            urls.setdefault(service, [])
            if url:
                urls[service].append(url)
                if is_ready is not None:
                    ready.setdefault(service, {})[url] = is_ready
        return [
            DiscoveredService(
                service,
                catalog.get(service).prefix,
                tuple(urls[service]),
                capabilities=catalog.get(service).capabilities,
                ready=ready.get(service, {}),
            )
            for service in sorted(urls)
        ]

    def module_views(self) -> list[dict[str, Any]]:
        """What ``GET /services`` shows of each BhivModule (the console draws its graph from it).

        Spec and status facts only: never ``env``, ``envFrom`` or the database
        secret's reference.
        """
        views = []
        for name, module in sorted(dict(self.modules).items()):
            spec = module.get("spec") or {}
            status = module.get("status") or {}
            depends_on = spec.get("dependsOn") or []
            views.append(
                {
                    "name": name,
                    "service": spec.get("service"),
                    "image": spec.get("image"),
                    "replicas": spec.get("replicas"),
                    "paused": bool(spec.get("paused", False)),
                    "dependsOn": [d for d in depends_on if isinstance(d, str)],
                    "readyReplicas": status.get("readyReplicas"),
                    "replicasReady": status.get("replicasReady"),
                    "waitingFor": [w for w in status.get("waitingFor") or () if isinstance(w, str)],
                    "url": status.get("url"),
                    "conditions": [
                        {k: c.get(k) for k in CONDITION_FIELDS}
                        for c in status.get("conditions") or ()
                        if isinstance(c, dict)
                    ],
                }
            )
        return views

    @staticmethod
    def _routing_view(module: dict[str, Any] | None) -> tuple[str, str | None, bool | None] | None:
        """The part of a module that matters for routing (or None: not routed)."""
        if module is None:
            return None
        spec = module.get("spec") or {}
        status = module.get("status") or {}
        service = spec.get("service")
        if not isinstance(service, str):
            return None
        entry = catalog.SERVICES.get(service)
        if entry is None or not entry.prefix:
            return None  # the gateway itself, or a workload this build does not know
        url = status.get("url")
        url = (
            url.rstrip("/")
            if isinstance(url, str) and url.startswith(("http://", "https://"))
            else None
        )
        return service, url, serving(status)


def _named(obj: dict[str, Any]) -> bool:
    return isinstance(obj, dict) and isinstance((obj.get("metadata") or {}).get("name"), str)


class BhivModuleWatcher:
    """Keeps ``publish`` fed with the routed services of one namespace."""

    def __init__(
        self,
        namespace: str,
        publish: Callable[[list[DiscoveredService]], None],
        *,
        kubeconfig: str | None = None,
        api: AsyncClient | None = None,
    ) -> None:
        self.namespace = namespace
        self._publish = publish
        self._kubeconfig = kubeconfig
        self._api = api
        self._task: asyncio.Task[None] | None = None
        self.index = ModuleIndex()

    def start(self) -> None:
        """Start watching, as a task of the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bhivmodule-watcher")
        self._task.add_done_callback(_report_end)

    async def stop(self) -> None:
        """Stop watching: cancel the task (mid-request or mid-backoff) and close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task  # a failure was logged when it happened
            self._task = None
        if self._api is not None:
            await self._api.close()

    async def _client(self) -> AsyncClient:
        """The API client; a missing or broken configuration is retried like an outage."""
        backoff = 1.0
        while self._api is None:
            try:
                self._api = kube.client(kubeconfig=self._kubeconfig)
            except Exception as exc:  # noqa: BLE001 - e.g. the kubeconfig not mounted yet
                log.warning(
                    "no Kubernetes configuration: %s; retrying in %.0fs",
                    type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = kube.next_backoff(backoff)
        return self._api

    async def _run(self) -> None:
        api = await self._client()  # list_watch retries every API failure itself
        async for update in kube.list_watch(api, kube.BhivModule, self.namespace):
            if isinstance(update, kube.Listing):
                self.index.reset(update.items, update.resource_version)
                changed = True
            else:
                changed = self.index.apply(update.type, update.object)
            if changed:
                self._publish(self.index.services())


def _report_end(task: asyncio.Task[None]) -> None:
    """Discovery must not stop silently: say so when the watcher ends other than by stop()."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("BhivModule discovery stopped", exc_info=exc)
