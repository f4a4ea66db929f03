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
  ``async for`` or cancelling its task.

lightkube was chosen over the official ``kubernetes`` client because it is async
(no threads around a synchronous client), typed (mypy checks our calls), builds the
REST paths from resource classes, and is a small fraction of the official client's
installed size.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Collection
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
    "client",
    "list_once",
    "list_watch",
    "load_config",
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
