"""Calling external APIs through a connection: its auth, timeout, rate limit and
metrics.

Credentials are decrypted only to build a call's headers and never leave this
module: not in a log line, not in an error message, not in an answer. Every
call adds to the connection's metrics in the database, so the numbers are the
same whichever replica made the call.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio.to_thread
import httpx
from aiolimiter import AsyncLimiter
from sqlalchemy import update

from bhiv.core.db import Database, utcnow
from bhiv.core.errors import Problem, field_problem
from bhiv.integrations import egress
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.models import AuthType, Connection

log = logging.getLogger("bhiv.integrations.connections")

ERROR_EXCERPT = 500
DEFAULT_API_KEY_HEADER = "X-API-Key"
# Which secrets each auth type needs; anything else sent is refused, so a typo
# cannot leave a connection silently unauthenticated.
REQUIRED: dict[AuthType, tuple[str, ...]] = {
    AuthType.none: (),
    AuthType.bearer: ("token",),
    AuthType.basic: ("username", "password"),
    AuthType.api_key: ("api_key",),
}


def check_credentials(auth_type: AuthType, secrets: Mapping[str, str]) -> None:
    """422 naming the field when ``secrets`` do not fit ``auth_type``."""
    for name in REQUIRED[auth_type]:
        if not secrets.get(name):
            raise field_problem(f"credentials.{name}", f"is required for {auth_type.value} auth")
    for name, value in secrets.items():
        if name not in REQUIRED[auth_type]:
            raise field_problem(
                f"credentials.{name}", f"is not used by {auth_type.value} auth; leave it out"
            )
        # Header values cannot carry control characters; refuse them now
        # rather than on every call.
        if not value.isprintable() or (name == "username" and ":" in value):
            raise field_problem(
                f"credentials.{name}", "must be printable text (and a username has no ':')"
            )


def auth_headers(
    auth_type: AuthType, api_key_header: str | None, secrets: Mapping[str, str]
) -> dict[str, str]:
    match auth_type:
        case AuthType.bearer:
            return {"Authorization": f"Bearer {secrets['token']}"}
        case AuthType.basic:
            pair = f"{secrets['username']}:{secrets['password']}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        case AuthType.api_key:
            return {api_key_header or DEFAULT_API_KEY_HEADER: secrets["api_key"]}
    return {}


class PathOutsideBase(ValueError):
    """A path that would leave a connection's base URL; the message is safe to show."""


# A path that survives this many rounds of percent-decoding still changing is refused:
# no legitimate path is encoded three times over.
MAX_DECODE_ROUNDS = 3


def check_relative_path(path: str) -> str:
    """``path`` if appending it to a base URL cannot leave that base, else :class:`PathOutsideBase`.

    The path is the attacker's half of a URL whose other half carries a credential, so
    it is refused rather than cleaned: no dot segments (plain, percent-encoded or
    double-encoded, since the far server or a proxy in front of it may decode again),
    no backslashes (some servers read them as '/'), no leading '//' (a network-path
    reference names another host).
    """
    part = path.split("?", 1)[0].split("#", 1)[0]
    decoded = part
    for _ in range(MAX_DECODE_ROUNDS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        raise PathOutsideBase("is percent-encoded too many times over")
    if path.startswith("//") or decoded.startswith("//"):
        raise PathOutsideBase("must not start with '//' (that names another host)")
    if "\\" in decoded:
        raise PathOutsideBase("must not contain backslashes")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise PathOutsideBase("must not contain '.' or '..' segments (plain or percent-encoded)")
    return path


def join_url(base_url: str, path: str) -> str:
    """``path`` under ``base_url``, checked twice: the path alone, then the joined URL
    resolved as an HTTP client resolves it must keep the base's origin and path prefix."""
    check_relative_path(path)
    url = base_url.rstrip("/") + "/" + path.lstrip("/")
    base, joined = httpx.URL(base_url), httpx.URL(url)
    prefix = base.path.rstrip("/") + "/"
    if (joined.scheme, joined.host, joined.port) != (base.scheme, base.host, base.port) or not (
        joined.path + "/"
    ).startswith(prefix):
        raise PathOutsideBase("leaves the connection's base URL")
    return url


@dataclass(frozen=True)
class Endpoint:
    """What a call needs from a connection, read in one short transaction."""

    id: int
    base_url: str
    timeout: float
    rate_limit_per_minute: int | None
    headers: dict[str, str] = field(repr=False)  # carries credentials: never printed

    def url(self, path: str) -> str:
        """Raises :class:`PathOutsideBase` for a path that would leave the base URL."""
        return join_url(self.base_url, path)


def endpoint(conn: Connection, box: SecretBox) -> Endpoint:
    secrets = box.open_json(conn.credentials) if conn.credentials else {}
    return Endpoint(
        id=conn.id,
        base_url=conn.base_url,
        timeout=conn.timeout_seconds,
        rate_limit_per_minute=conn.rate_limit_per_minute,
        headers=auth_headers(conn.auth_type, conn.api_key_header, secrets),
    )


class CallFailed(Exception):
    """A call got no usable answer; the message is safe to show and store."""


class RateLimited(Exception):
    pass


class ConnectionCaller:
    """One pooled HTTP client and one rate limiter per connection, for this process."""

    def __init__(self, db: Database, policy: egress.EgressPolicy) -> None:
        self._db = db
        self._policy = policy
        self._http = egress.guarded_client(policy)
        self._limiters: dict[tuple[int, int], AsyncLimiter] = {}

    def _limiter(self, ep: Endpoint) -> AsyncLimiter | None:
        if not ep.rate_limit_per_minute:
            return None
        key = (ep.id, ep.rate_limit_per_minute)
        if key not in self._limiters:
            self._limiters[key] = AsyncLimiter(ep.rate_limit_per_minute, 60)
        return self._limiters[key]

    async def get(
        self, ep: Endpoint, path: str, params: Mapping[str, Any] | None = None, *, wait: bool = True
    ) -> httpx.Response:
        """GET ``path``; records metrics. ``wait=False`` raises :class:`RateLimited` instead of queueing."""
        try:
            url = ep.url(path)
        except PathOutsideBase as exc:
            # Checked when the path was saved or sent; a row written before that check
            # existed still never carries the credential elsewhere.
            raise CallFailed(f"path {exc}") from None
        refused = self._policy.url_refusal(url)
        if refused:
            raise CallFailed(refused)
        limiter = self._limiter(ep)
        if limiter is not None:
            if not wait and not limiter.has_capacity():
                raise RateLimited()
            await limiter.acquire()
        start = time.perf_counter()
        try:
            response = await self._http.get(
                url, params=params, headers=ep.headers, timeout=ep.timeout
            )
        except httpx.TimeoutException:
            await self._record(ep.id, start, None, f"timed out after {ep.timeout}s")
            raise CallFailed(f"timed out after {ep.timeout}s") from None
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: could not reach {egress.host_of(url)}"
            await self._record(ep.id, start, None, reason)
            raise CallFailed(reason) from None
        except egress.EgressRefused as exc:
            await self._record(ep.id, start, None, str(exc))
            raise CallFailed(str(exc)) from None
        error = None if response.status_code < 400 else f"HTTP {response.status_code}"
        await self._record(ep.id, start, response.status_code, error)
        return response

    async def _record(
        self, conn_id: int, start: float, status: int | None, error: str | None
    ) -> None:
        latency = (time.perf_counter() - start) * 1000
        await anyio.to_thread.run_sync(record_call, self._db, conn_id, latency, status, error)

    async def aclose(self) -> None:
        await self._http.aclose()


def record_call(
    db: Database, conn_id: int, latency_ms: float, status: int | None, error: str | None
) -> None:
    now = utcnow()
    values: dict[str, Any] = {
        "calls": Connection.calls + 1,
        "latency_ms_total": Connection.latency_ms_total + latency_ms,
        "last_latency_ms": latency_ms,
        "last_status_code": status,
        "last_called_at": now,
        "last_error": error[:ERROR_EXCERPT] if error else None,
    }
    if error:
        values["errors"] = Connection.errors + 1
    else:
        values["last_success_at"] = now
    with db.session() as session:
        session.execute(update(Connection).where(Connection.id == conn_id).values(**values))
        session.commit()


def load_endpoint(db: Database, box: SecretBox, conn_id: int) -> Endpoint:
    with db.session(write=False) as session:
        conn = session.get(Connection, conn_id)
        if conn is None:
            raise CallFailed(f"connection {conn_id} no longer exists")
        try:
            return endpoint(conn, box)
        except UnreadableSecret as exc:
            raise CallFailed(str(exc)) from None


def rate_limited_problem() -> Problem:
    return Problem(
        429,
        "The connection's rate limit is used up; try again shortly.",
        kind="rate-limited",
        headers={"Retry-After": "1"},
    )
