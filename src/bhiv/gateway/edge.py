"""The edge pipeline every routed request goes through, single or in a batch.

In order: the per-IP rate limit (before anything else, so scanning and
credential guessing are limited too), the path's shape (400 for a path that
could mean two things, dot or empty segments once decoded, so the path the
rules were checked on is exactly the one the service routes on), the
route (longest prefix; 404 when none), authentication and the route's role (401/403), the per-caller rate
limit, then the forwarder. The request is rewritten for the service on the
way: hop-by-hop headers dropped (RFC 9110 §7.6.1), ``X-Forwarded-For``/
``-Proto``/``-Host``/``-Prefix`` and the request ID set, credentials replaced
by the caller's identity. Bodies are streamed, never held whole, except small
ones kept so that a retry can resend them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from bhiv.core.auth import Identity
from bhiv.core.context import request_id_var
from bhiv.core.errors import Problem
from bhiv.core.middleware import ACCESS_LOG_EXTRA, forwarded_chain, send_problem
from bhiv.gateway.access import EdgeAuth
from bhiv.gateway.forwarder import BodyTooLarge, ClientGone, Forwarded, Forwarder, RequestBody
from bhiv.gateway.ratelimit import Decision, RateLimiter, rate_limit_headers
from bhiv.gateway.registry import Registry, Upstream
from bhiv.gateway.settings import GatewaySettings

API_ROOT = "/api/"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself (or meaningless past it), so a client's own are dropped.
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"expect",
    b"x-request-id",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-bhiv-subject",
    b"x-bhiv-roles",
}
_CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
# The gateway's server writes its own Date, Server and X-Request-ID, and CORS
# is the edge's policy, not each service's.
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}

log = logging.getLogger("bhiv.gateway")


@dataclass
class RouteLabel:
    """What the framework's metrics and access log read as the route template."""

    path: str


@dataclass
class Admitted:
    upstream: Upstream
    target: str  # path below the prefix, with the query, as the service sees it
    headers: list[tuple[bytes, bytes]]
    limits: list[Decision]


def limited(problem: Problem, limits: list[Decision]) -> Problem:
    """The problem, carrying the rate-limit fields of the request."""
    if limits:
        extra = {k.decode(): v.decode() for k, v in rate_limit_headers(limits)}
        problem.headers = {**(problem.headers or {}), **extra}
    return problem


class Edge:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        auth: EdgeAuth,
        limiter: RateLimiter,
        forwarder: Forwarder,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.auth = auth
        self.limiter = limiter
        self.forwarder = forwarder

    async def admit(
        self,
        method: str,
        path: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        scheme: str,
        identity: Identity | None = None,
        scope: Scope | None = None,
        caller_authorization: str | None = None,
        forwarded_for: str | None = None,
    ) -> Admitted:
        limits: list[Decision] = []
        if self.limiter.enabled("ip"):
            decision = await self.limiter.take("ip", client_ip)
            assert decision is not None
            limits.append(decision)
            if not decision.allowed:
                raise limited(too_many("your address"), limits)

        try:
            check_path(path)
        except Problem as problem:
            raise limited(problem, limits) from None
        match = self.registry.match(path)
        if match is None:
            raise limited(
                Problem(
                    404,
                    f"No service is routed at {path}; GET /services lists the routes.",
                    kind="not-found",
                ),
                limits,
            )
        upstream, below = match
        if scope is not None:
            scope["route"] = RouteLabel(upstream.route_template)
            scope[ACCESS_LOG_EXTRA] = {"upstream": upstream.name}

        # A batch's sub-requests run as the batch's caller, with its credential.
        authorization = caller_authorization
        api_key = host = None
        connection_tokens: set[bytes] = set()
        for name, value in headers:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"host":
                host = value
            elif name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))

        policy = upstream.policy
        public = self.auth.is_public(policy, below) or upstream.declares_public(method, below)
        try:
            if identity is None and not public:
                identity = self.auth.authenticate(authorization, api_key)
            elif identity is None and (authorization is not None or api_key is not None):
                # On a public path a credential is optional: a valid one makes the
                # caller known to the service (as a JWT), an invalid one is ignored.
                with contextlib.suppress(Problem):
                    identity = self.auth.authenticate(authorization, api_key)
            if identity is not None and not public:
                self.auth.authorize(identity, self.auth.required_role(policy, method, below))
        except Problem as problem:
            raise limited(problem, limits) from None

        if identity is not None and self.limiter.enabled("key"):
            decision = await self.limiter.take("key", f"{identity.method}:{identity.subject}")
            assert decision is not None
            limits.append(decision)
            if not decision.allowed:
                raise limited(too_many("your credential"), limits)

        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name in _REQUEST_DROP or name in connection_tokens or name == b"x-forwarded-for":
                continue
            if (
                name in _CREDENTIALS
            ):  # never forwarded raw: replaced by the caller's identity, if any
                continue
            out.append((name, value))
        # The client and what the trusted proxies vouch for (bhiv.core.middleware.forwarded_chain).
        out.append((b"x-forwarded-for", (forwarded_for or client_ip).encode("latin-1")))
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
        if host:
            out.append((b"x-forwarded-host", host))
        out.append((b"x-forwarded-prefix", upstream.prefix.encode()))
        rid = request_id_var.get()
        if rid:
            out.append((b"x-request-id", rid.encode()))
        if identity is not None:
            out.extend(self.auth.upstream_credentials(identity, authorization))

        prefix = upstream.prefix.encode()
        if raw_path.startswith(prefix) and (
            len(raw_path) == len(prefix) or raw_path[len(prefix)] == 0x2F
        ):
            raw_below = raw_path[len(prefix) :].decode("latin-1") or "/"
        else:  # the client percent-encoded part of the prefix itself
            raw_below = quote(below)
        target = raw_below + ("?" + query.decode("latin-1") if query else "")
        return Admitted(upstream, target, out, limits)

    # -- one request, streamed both ways -------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        headers = scope["headers"]
        client = scope.get("client")
        admitted = await self.admit(
            method,
            scope["path"],
            scope.get("raw_path") or scope["path"].encode(),
            scope.get("query_string", b""),
            headers,
            client[0] if client else "unknown",
            scope.get("scheme", "http"),
            scope=scope,
            forwarded_for=forwarded_chain(scope),
        )
        body = await self._body(headers, receive, admitted)
        try:
            forwarded = await self.forwarder.forward(
                admitted.upstream, method, admitted.target, admitted.headers, body
            )
        except BodyTooLarge:
            raise limited(
                _too_large(self.settings.gateway_max_body_bytes), admitted.limits
            ) from None
        except ClientGone:
            await send_problem(
                send,
                499,
                "The client closed the request.",
                instance=scope["path"],
                kind="client-closed",
            )
            return
        except Problem as problem:
            raise limited(problem, admitted.limits) from None
        scope[ACCESS_LOG_EXTRA]["instance"] = forwarded.instance.url
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": forwarded.status,
                    "headers": response_headers(forwarded) + rate_limit_headers(admitted.limits),
                }
            )
            async for chunk in forwarded.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except aiohttp.ClientError as exc:
            # Too late for a status: the client sees the body cut short.
            log.warning(
                "%s broke off its answer to %s %s: %s",
                forwarded.upstream.name,
                method,
                scope["path"],
                type(exc).__name__,
            )
        finally:
            await forwarded.aclose()

    async def _body(
        self, headers: list[tuple[bytes, bytes]], receive: Receive, admitted: Admitted
    ) -> RequestBody:
        length: int | None = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise limited(
                        Problem(400, "Content-Length is not a number.", kind="bad-request"),
                        admitted.limits,
                    ) from None
            elif name == b"transfer-encoding":
                chunked = True
        limit = self.settings.gateway_max_body_bytes
        if length is not None and length > limit:
            raise limited(_too_large(limit), admitted.limits)
        if not chunked and not length:
            return RequestBody(None)
        if length is not None and length <= self.settings.gateway_retry_buffer_bytes:
            parts = []
            async for chunk in _receive_body(receive, limit):
                parts.append(chunk)
            return RequestBody(b"".join(parts))
        return RequestBody(stream=_receive_body(receive, limit))


async def _receive_body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def public_location(location: str, upstream: Upstream) -> str:
    """A service's ``Location`` as the client must follow it: through the gateway, never to an internal address.

    Services see themselves at their root: a path-absolute ``/conversations/7``
    is ``<prefix>/conversations/7`` at the gateway, and an absolute URL naming
    one of the service's instances (``http://10.0.0.5:8001/x``) becomes
    ``<prefix>/x``. Anything else (another site, a relative reference) is left
    as the service wrote it.
    """
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        origins = {urlsplit(i.url)[:2] for i in upstream.instances}
        if (parts.scheme.lower(), parts.netloc.lower()) not in {
            (a.lower(), b.lower()) for a, b in origins
        }:
            return location
    elif not location.startswith("/") or location.startswith("//"):
        return location
    path = parts.path or "/"
    if not (path == upstream.prefix or path.startswith(upstream.prefix + "/")):
        path = upstream.prefix + path
    return urlunsplit(("", "", path, parts.query, parts.fragment))


def response_headers(forwarded: Forwarded) -> list[tuple[bytes, bytes]]:
    out = []
    # No body may follow these, whatever length the service announced (RFC 9110 §8.6).
    bodiless = forwarded.status in (204, 304) or forwarded.status < 200
    connection_tokens: set[bytes] = set()
    raw = forwarded.raw_headers
    for name, value in raw:
        if name.lower() == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
    for name, value in raw:
        lower = name.lower()
        if (
            lower in _RESPONSE_DROP
            or lower in connection_tokens
            or lower.startswith(b"access-control-")
        ):
            continue
        if lower == b"content-length" and (forwarded.body is not None or bodiless):
            continue
        if lower == b"location":
            value = public_location(value.decode("latin-1"), forwarded.upstream).encode("latin-1")
        out.append((lower, value))
    if forwarded.body is not None and not bodiless:
        out.append((b"content-length", str(len(forwarded.body)).encode()))
    return out


def check_path(path: str) -> None:
    """A 400 problem unless the decoded ``path`` has one meaning for the gateway and the service alike.

    Role rules and public paths are matched on the decoded path while the raw
    one is forwarded, and servers and proxies differ on dot segments and
    doubled slashes (``/public/../admin``, ``//admin``, ``/public%2F..%2Fadmin``
    decoded): rather than guess, such a path is refused. An encoded slash in a
    segment (an ID like ``a%2Fb``) passes on untouched: services decode it as
    the gateway does, into the path the rules were checked on.
    """
    reason = None
    if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        reason = "a backslash or a control character"
    else:
        segments = path.split("/")[1:]
        if any(s in (".", "..") for s in segments):
            reason = "a '.' or '..' segment"
        elif "" in segments[:-1]:
            reason = "an empty segment ('//')"
    if reason is not None:
        raise Problem(
            400,
            f"The request path contains {reason}; send the normalised path.",
            kind="bad-request",
            errors=[{"field": "path", "location": "path", "message": f"contains {reason}"}],
        )


def too_many(whose: str) -> Problem:
    return Problem(
        429,
        f"Too many requests from {whose}; slow down and retry after Retry-After seconds.",
        kind="rate-limited",
    )


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        f"The request body exceeds the gateway's limit of {limit} bytes.",
        kind="payload-too-large",
    )


class ProxyRoute(BaseRoute):
    """Every path under /api/: handed to the edge pipeline (matched before any other route)."""

    path = "/api/{path}"

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and (
            scope["path"].startswith(API_ROOT) or scope["path"] == API_ROOT[:-1]
        ):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.edge.serve(scope, receive, send)
