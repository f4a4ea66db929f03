"""Pure-ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

:class:`RequestContextMiddleware` gives each request an ID, records the caller's
credential headers for propagation, writes one access-log line, records metrics
and turns an unexpected crash into a 500 problem body carrying the request ID.
:class:`LoadShedMiddleware` limits the requests in the app at once, queueing
then shedding the excess with 503 problems (liveness and readiness exempt).
:class:`BodyLimitMiddleware` answers 413 to bodies over the configured size,
whether announced by Content-Length or streamed in chunks; paths a service
declares as streaming are left to their handler, which reads the body as it
arrives and enforces its own limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bhiv.core.context import credentials_var, request_id_var
from bhiv.core.errors import INTERNAL_ERROR_DETAIL, PROBLEM_JSON, problem_body
from bhiv.core.metrics import UNMATCHED_ROUTE, HttpMetrics

REQUEST_ID_HEADER = "x-request-id"
# Scope key holding the socket's peer (host, port), before trusted proxy
# headers replace ``client`` with the address they name.
PEER = "bhiv.peer"
# Scope key an app may fill with fields for its request's access-log line
# (e.g. the gateway's upstream); never put a secret in it.
ACCESS_LOG_EXTRA = "bhiv.access_log"
# A caller-supplied request ID is kept only when it is short and plain, so it
# cannot inject anything into logs or headers.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CREDENTIAL_HEADERS = {b"authorization": "Authorization", b"x-api-key": "X-API-Key"}

access_log = logging.getLogger("bhiv.access")
error_log = logging.getLogger("bhiv.errors")


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    *,
    instance: str,
    kind: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(problem_body(status, detail, instance=instance, kind=kind)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = None
        credentials: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _SAFE_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name in _CREDENTIAL_HEADERS:
                credentials[_CREDENTIAL_HEADERS[name]] = value.decode("latin-1")
        request_id = request_id or uuid.uuid4().hex
        rid_token = request_id_var.set(request_id)
        cred_token = credentials_var.set(credentials or None)

        status = 500
        response_started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                await send_problem(
                    send_with_id,
                    500,
                    INTERNAL_ERROR_DETAIL,
                    instance=scope["path"],
                    kind="internal-error",
                )
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_progress.dec()
            route = _route_template(scope)
            self.metrics.observe(scope["method"], route, status, elapsed)
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": (scope.get("client") or ("-",))[0],
                    **scope.get(ACCESS_LOG_EXTRA, {}),
                },
            )
            request_id_var.reset(rid_token)
            credentials_var.reset(cred_token)


class PeerMiddleware:
    """Keeps the socket's peer in the scope (as :data:`PEER`) before proxy headers rewrite ``client``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[PEER] = scope.get("client")
        await self.app(scope, receive, send)


def forwarded_chain(scope: Scope) -> str:
    """The X-Forwarded-For to send on: the client, the trusted proxies after it, and the peer.

    Entries left of the client were written by the client (or by proxies not
    trusted) and are dropped: only the part of the chain this server can vouch
    for travels on.
    """
    client = (scope.get("client") or ("unknown",))[0]
    peer = (scope.get(PEER) or scope.get("client") or ("unknown",))[0]
    if peer == client:
        return client
    entries = [
        e.strip()
        for name, value in scope["headers"]
        if name == b"x-forwarded-for"
        for e in value.decode("latin-1").split(",")
    ]
    chain: list[str] = []
    for entry in reversed(entries):
        chain.append(entry)
        if entry == client or entry.startswith((client + ":", f"[{client}]")):
            break
    return ", ".join([*reversed(chain), peer])


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ROUTE


class LoadShedMiddleware:
    """At most ``limit`` requests in the app at once; the next wait their turn, the rest get 503.

    Up to ``queue`` requests wait (first come, first served) for at most
    ``wait`` seconds; a request that finds the queue full, or waits too long,
    is answered 503 ``overloaded`` with Retry-After. The limit is per request,
    never per socket, and ``exempt_paths`` (liveness, readiness) are always
    answered, so probes see a busy server as alive.
    """

    def __init__(
        self, app: ASGIApp, limit: int, queue: int, wait: float, exempt_paths: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.queue = queue
        self.wait = wait
        self.exempt_paths = frozenset(exempt_paths)
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if self._slots.locked():
            if self._waiting >= self.queue:
                await self._shed(scope, send)
                return
            self._waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait)
            except TimeoutError:
                await self._shed(scope, send)
                return
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _shed(self, scope: Scope, send: Send) -> None:
        await send_problem(
            send,
            503,
            "The service is at capacity; retry after Retry-After seconds.",
            instance=scope["path"],
            kind="overloaded",
            headers=[(b"retry-after", b"1")],
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, exempt_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
            or (self.exempt_paths and scope["path"].startswith(self.exempt_paths))
        ):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_problem(
                        send,
                        400,
                        "Content-Length is not a number.",
                        instance=scope["path"],
                        kind="bad-request",
                    )
                    return
        if declared is not None:
            if declared > self.max_bytes:
                await self._too_large(scope, send)
                return
            await self.app(scope, receive, send)
            return

        # No Content-Length (chunked): read up to the limit before the app sees
        # anything, so an oversized body is refused before any work is done.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks)}], receive), send
        )

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await send_problem(
            send,
            413,
            f"The request body exceeds the limit of {self.max_bytes} bytes.",
            instance=scope["path"],
            kind="payload-too-large",
        )


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
