"""Kubernetes discovery: the BhivModules in the gateway's namespace, watched.

Two layers, so the part with the decisions is testable on plain dicts:

- :class:`ModuleIndex` (pure): applies list results and watch events to the
  set of BhivModules and turns them into routed services. A module routes its
  ``spec.service``'s catalog prefix to ``status.url``; modules of one service
  are that service's instances; a module whose ``Ready`` condition is not True
  stays listed but out of rotation (its routes answer 503, not 404).
- :class:`BhivModuleWatcher` (I/O): lists, then watches, with the official
  ``kubernetes`` client in a thread (the client is synchronous), relisting when
  the API server says the resource version is too old (410 Gone), and hands each
  new service list to the event loop.

The gateway needs only ``get``, ``list`` and ``watch`` on ``bhivmodules`` in
its namespace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bhiv import catalog
from bhiv.gateway.registry import DiscoveredService

GROUP = "bhiv.io"
VERSION = "v1alpha1"
PLURAL = "bhivmodules"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Server-side watch timeout: the API server ends the watch after this long and
# we resume from the last resource version, so a silently dead connection is
# noticed within a bounded time.
WATCH_SECONDS = 60
# Client-side (connect, read) timeouts; the read timeout outlasts the watch's.
REQUEST_TIMEOUT = (5, WATCH_SECONDS + 30)
MAX_BACKOFF_SECONDS = 30.0
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
        secret's reference. Safe to call from the event loop while the watcher
        thread updates the index (it reads a snapshot).
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


def default_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class BhivModuleWatcher:
    """Keeps ``publish`` fed with the routed services of one namespace."""

    def __init__(
        self,
        namespace: str,
        publish: Callable[[list[DiscoveredService]], None],
        *,
        kubeconfig: str | None = None,
        api: Any = None,
    ) -> None:
        self.namespace = namespace
        self._publish = publish
        self._kubeconfig = kubeconfig
        self._api = api
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self.index = ModuleIndex()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def publish() -> None:
            services = self.index.services()
            loop.call_soon_threadsafe(self._publish, services)

        self._thread = threading.Thread(
            target=self._run, args=(publish,), name="bhivmodule-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            # The thread may sit in a blocking read; it is a daemon and exits
            # at its next event or timeout.
            self._thread.join(2)

    def _client(self) -> Any:
        from kubernetes import client, config

        if self._api is None:
            if self._kubeconfig:
                api_client = config.new_client_from_config(config_file=self._kubeconfig)
            else:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
                api_client = client.ApiClient()
            self._api = client.CustomObjectsApi(api_client)
        return self._api

    def _run(self, publish: Callable[[], None]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = 1.0
        relist = True
        while not self._stop.is_set():
            try:
                api = self._client()
                if relist:
                    listing = api.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
                    )
                    self.index.reset(
                        listing.get("items", []), listing.get("metadata", {}).get("resourceVersion")
                    )
                    publish()
                    relist = False
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=self.index.resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=REQUEST_TIMEOUT,
                ):
                    if self._stop.is_set():
                        return
                    if self.index.apply(event["type"], event.get("raw_object") or event["object"]):
                        publish()
                backoff = 1.0
            except Exception as exc:  # the API server unreachable, a broken stream, an error status
                if self._stop.is_set():
                    return  # stop() broke the connection on purpose
                relist = True
                if isinstance(exc, ApiException) and exc.status == 410:
                    log.info("BhivModule watch expired (410 Gone); listing again")
                    continue
                why = (
                    f"HTTP {exc.status} {exc.reason}"
                    if isinstance(exc, ApiException)
                    else type(exc).__name__
                )
                log.warning("BhivModule watch failed: %s; retrying in %.0fs", why, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
