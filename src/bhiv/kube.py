"""The one place BHIV talks to the Kubernetes API: lightkube, async and typed.

The operator's writes, the gateway's discovery and ``bhiv wait-modules`` / ``bhiv
modules`` all come through here (Kopf keeps its own client for its watches). This
module owns:

- the BhivModule resource (``GROUP``, ``VERSION``, ``PLURAL``, ``KIND`` and the
  lightkube class :data:`BhivModule`);
- configuration: an explicit kubeconfig wins, else in-cluster, else
  ``$KUBECONFIG`` or ``~/.kube/config``;
- :func:`client`: an ``AsyncClient`` whose every request has a timeout, so a stuck
  connection fails instead of hanging its caller;
- :func:`list_watch`: list, then watch from the list's resourceVersion (with
  bookmarks and a server-side timeout), listing again on ``410 Gone`` and after
  errors (with exponential backoff up to 30 s). It yields a :class:`Listing` after
  every list and a :class:`Change` per event; a caller stops it by leaving the
  ``async for`` or cancelling its task;
- :func:`observe_requests`: tells a callback the Kubernetes verb and resource of
  every request a client sends (the operator counts them, by verb).

lightkube was chosen over the official ``kubernetes`` client because it is async
(no threads around a synchronous client), typed (mypy checks our calls), builds the
REST paths from resource classes, and is a small fraction of the official client's
installed size.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig, NotReadyError
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ApiError",
    "BhivModule",
    "Change",
    "ConfigError",
    "KubeConfig",
    "Listing",
    "RequestObserver",
    "client",
    "list_once",
    "list_watch",
    "load_config",
    "observe_requests",
    "request_kind",
    "status_code",
]

GROUP = "bhiv.io"
VERSION = "v1alpha1"
PLURAL = "bhivmodules"
KIND = "BhivModule"
BhivModule = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Client-side timeouts: connect, then each read of the answer. A watch's stream may
# stay silent for at most WATCH_SECONDS + WATCH_GRACE_SECONDS.
CONNECT_SECONDS = 5.0
REQUEST_SECONDS = 30.0
# Server-side watch timeout: the API server ends each watch after this long and the
# watch resumes from the last resource version, so a silently dead connection (no
# event, no bookmark, no end) is noticed within WATCH_SECONDS + WATCH_GRACE_SECONDS.
WATCH_SECONDS = 60
WATCH_GRACE_SECONDS = 30
MAX_BACKOFF_SECONDS = 30.0

log = logging.getLogger("bhiv.kube")
# The backoff's wait, a name of its own so that tests can record it instead of waiting.
_sleep = asyncio.sleep


def load_config(kubeconfig: str | None = None) -> KubeConfig:
    """An explicit kubeconfig wins; else in-cluster; else $KUBECONFIG or ~/.kube/config.

    Raises :class:`ConfigError` (or ``OSError`` for an unreadable file) when none is usable.
    """
    if kubeconfig:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


def default_namespace() -> str:
    """The pod's own namespace (from its service-account token), else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def client(
    config: KubeConfig | None = None,
    *,
    kubeconfig: str | None = None,
    field_manager: str | None = None,
    request_seconds: float = REQUEST_SECONDS,
) -> AsyncClient:
    """An ``AsyncClient`` with request timeouts; ``config`` or else :func:`load_config`.

    It connects lazily, on its first request: make it in the event loop that uses it.
    """
    return AsyncClient(
        config if config is not None else load_config(kubeconfig),
        timeout=httpx2.Timeout(request_seconds, connect=CONNECT_SECONDS),
        field_manager=field_manager,
    )


# Told (verb, resource) of each request a client sends; see observe_requests.
RequestObserver = Callable[[str, str], None]


def observe_requests(api: AsyncClient, observe: RequestObserver) -> None:
    """Call ``observe(verb, resource)`` before every request ``api`` sends.

    An httpx request hook on the client under lightkube, so every request counts:
    lightkube's own calls, :func:`list_once` and each watch request of
    :func:`list_watch`, retries included.
    """

    async def hook(request: httpx2.Request) -> None:
        observe(*request_kind(request.method, request.url.path, request.url.params))

    http = api._client._client  # noqa: SLF001 - lightkube exposes no hook of its own
    http.event_hooks["request"].append(hook)


# Subresources of a namespace itself: /api/v1/namespaces/NAME/status is not a
# resource called "status" in the namespace NAME.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def request_kind(method: str, path: str, params: Any = None) -> tuple[str, str]:
    """The Kubernetes verb (get, list, watch, create, update, patch, delete,
    deletecollection) and resource (``deployments``, ``bhivmodules/status``) of a
    request to the API server, as its audit log and RBAC name them.

    A path outside the resource APIs (``/version``, ``/openapi/v2``) is ``nonresource``.
    """
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        rest = parts[2:]  # /api/v1/...
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        rest = parts[3:]  # /apis/GROUP/VERSION/...
    else:
        return method.lower(), "nonresource"
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES)
    ):
        rest = rest[2:]  # namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]
    resource = "/".join((rest[0], rest[2])) if len(rest) >= 3 else rest[0]
    named = len(rest) >= 2
    verb = method.upper()
    if verb == "GET":
        watching = str((params or {}).get("watch", "")).lower() in ("true", "1")
        return ("watch" if watching else "get" if named else "list"), resource
    if verb == "DELETE":
        return ("delete" if named else "deletecollection"), resource
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(verb, verb.lower()), resource


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API server refusal (None for any other failure)."""
    if isinstance(exc, ApiError):
        return exc.status.code
    return None


@dataclass(frozen=True)
class Listing:
    """Every object the watch covers, as of ``resource_version`` (replaces what came before)."""

    items: list[dict[str, Any]]
    resource_version: str | None


@dataclass(frozen=True)
class Change:
    """One watch event: ``ADDED``, ``MODIFIED``, ``DELETED`` or ``BOOKMARK``."""

    type: str
    object: dict[str, Any]


def next_backoff(backoff: float) -> float:
    """The wait after the next failure in a row: doubling, at most MAX_BACKOFF_SECONDS."""
    return min(backoff * 2, MAX_BACKOFF_SECONDS)


async def list_watch(
    api: AsyncClient,
    resource: type[NamespacedResource],
    namespace: str,
    *,
    labels: str | None = None,
    fatal: Collection[int] = (),
    watch_seconds: int = WATCH_SECONDS,
) -> AsyncGenerator[Listing | Change, None]:
    """List ``resource`` in ``namespace``, then watch it, for as long as the caller iterates.

    ``labels`` is a label selector (``a=b,c``). An API refusal whose status is in
    ``fatal`` (e.g. 401, 403) is raised; every other failure is logged, waited out
    with exponential backoff and followed by a fresh list.
    """
    params: dict[str, Any] = {"labelSelector": labels}
    backoff = 1.0
    while True:
        try:
            listing = await list_once(api, resource, namespace, labels=labels)
            backoff = 1.0
            yield listing
            version = listing.resource_version
            while True:  # one watch request per round; the server ends each after watch_seconds
                async for change in _watch(
                    api, resource, namespace, params, version, watch_seconds
                ):
                    version = change.object.get("metadata", {}).get("resourceVersion") or version
                    yield change
        except Exception as exc:  # noqa: BLE001 - unreachable, dropped, refused: list again
            code = status_code(exc)
            if code in fatal:
                raise
            if code == 410:
                log.info("%s watch expired (410 Gone); listing again", resource.__name__)
                continue
            why = f"HTTP {code} {exc}" if code is not None else type(exc).__name__
            log.warning("%s watch failed: %s; retrying in %.0fs", resource.__name__, why, backoff)
            await _sleep(backoff)
            backoff = next_backoff(backoff)


async def list_once(
    api: AsyncClient,
    resource: type[NamespacedResource],
    namespace: str,
    *,
    labels: str | None = None,
) -> Listing:
    """Every ``resource`` in ``namespace`` (matching the label selector ``labels``), as plain dicts."""
    # Built with lightkube's request helper (not AsyncClient.list) so that a label
    # selector string is passed as it is, set-based expressions included.
    generic = api._client  # noqa: SLF001
    found = generic.list(
        generic.prepare_request(
            "list", res=resource, namespace=namespace, params={"labelSelector": labels}
        )
    )
    items = [_plain(obj) async for obj in found]
    try:
        version: str | None = found.resourceVersion
    except NotReadyError:  # the server sent no version; the watch starts from "now"
        version = None
    return Listing(items, version)


async def _watch(
    api: AsyncClient,
    resource: type[NamespacedResource],
    namespace: str,
    params: dict[str, Any],
    version: str | None,
    watch_seconds: int,
) -> AsyncIterator[Change]:
    """One watch request, from ``version``, ending when the server ends it.

    lightkube's public ``watch`` neither asks for bookmarks nor exposes where one
    request ends, and reads its stream without a timeout; so the request is built
    with its own helpers, and the stream may not stay silent for longer than the
    server's timeout plus a grace period.
    """
    generic = api._client  # noqa: SLF001 - see the docstring
    request = generic.prepare_request(
        "list",
        res=resource,
        namespace=namespace,
        watch=True,
        params={
            **params,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": watch_seconds,
        },
    )
    http = generic._client  # noqa: SLF001
    timeout = httpx2.Timeout(watch_seconds + WATCH_GRACE_SECONDS, connect=CONNECT_SECONDS)
    built = http.build_request(request.method, request.url, params=request.params, timeout=timeout)
    response = await http.send(built, stream=True)
    try:
        if response.is_error:
            await response.aread()
            raise ApiError(request=built, response=response)
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            event = _decode(line)
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code")
                raise _status_error(built, int(code) if isinstance(code, int) else 500, obj)
            if isinstance(kind, str) and isinstance(obj, dict):
                yield Change(kind, obj)
    finally:
        await response.aclose()


def _decode(line: str) -> dict[str, Any]:
    event = json.loads(line)
    if not isinstance(event, dict):
        raise httpx2.DecodingError("a watch event that is not an object")
    return event


def _status_error(request: httpx2.Request, code: int, status: dict[str, Any]) -> ApiError:
    """An ApiError for an ERROR watch event (its object is a meta/v1 Status)."""
    response = httpx2.Response(
        code, json={"kind": "Status", **status, "code": code}, request=request
    )
    return ApiError(request=request, response=response)


def _plain(obj: Any) -> dict[str, Any]:
    plain: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return plain
