"""Authentication and authorization at the edge, and the identity sent upstream.

Credentials are checked with ``bhiv.core.auth`` (the same JWT and API-key rules
as every service, and its cache of verified tokens).

Services always receive a JWT: a caller's own token is passed unchanged; a
caller with an API key is sent upstream with a short-lived token minted for
it, so the key itself never leaves the edge and services need only the JWT
verification key. A minted token carries exactly the caller's identity
(subject, roles, tenant) and never outlives the caller's own credential; the
cache of minted tokens is keyed on all of that, so two callers who share a
subject but not a tenant never share a token. ``X-BHIV-Subject`` and ``X-BHIV-Roles`` describe the caller
for logs; any such header from a client is dropped.
"""

from __future__ import annotations

import math
import time
from urllib.parse import quote

from cachetools import TTLCache

from bhiv.core.auth import Authenticator, Identity, mint_token
from bhiv.core.errors import Problem
from bhiv.core.roles import SAFE_METHODS, satisfies
from bhiv.gateway.settings import GatewaySettings, RoutePolicy

# Tokens minted for API-key callers live this long, and are reused until
# they have less than a third of it left.
FORWARDED_TOKEN_TTL = 300
# Minted tokens remembered at once (the oldest are dropped first beyond this).
MINTED_CACHE_SIZE = 10_000


class _HeaderView:
    """What Authenticator reads from a request: its headers."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class EdgeAuth:
    def __init__(self, settings: GatewaySettings, authenticator: Authenticator) -> None:
        self._settings = settings
        self._authenticator = authenticator
        # Keyed on everything the token says plus the caller's own expiry.
        self._minted: TTLCache[tuple[object, ...], tuple[str, float]] = TTLCache(
            MINTED_CACHE_SIZE, FORWARDED_TOKEN_TTL
        )

    def authenticate(self, authorization: str | None, api_key: str | None) -> Identity:
        """The caller, or a 401 problem."""
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        if api_key is not None:
            headers["X-API-Key"] = api_key
        return self._authenticator.authenticate(_HeaderView(headers))  # type: ignore[arg-type]

    @staticmethod
    def required_role(policy: RoutePolicy, method: str, path: str) -> str:
        best: tuple[int, str] | None = None
        for rule in policy.rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            if _under(path, rule.path) and (best is None or len(rule.path) > best[0]):
                best = (len(rule.path), rule.role)
        if best is not None:
            return best[1]
        return policy.read_role if method in SAFE_METHODS else policy.write_role

    @staticmethod
    def is_public(policy: RoutePolicy, path: str) -> bool:
        return bool(policy.public_paths) and any(_under(path, p) for p in policy.public_paths)

    @staticmethod
    def authorize(identity: Identity, role: str) -> None:
        if not satisfies(identity.roles, role):
            roles = ", ".join(identity.roles) or "none"
            raise Problem(
                403,
                f"This route needs the '{role}' role or higher; your roles ({roles}) do not grant it.",
                kind="forbidden",
            )

    def upstream_credentials(
        self, identity: Identity, authorization: str | None
    ) -> list[tuple[bytes, bytes]]:
        """The identity headers sent to the service in place of the caller's credentials."""
        if identity.method == "jwt" and authorization is not None:
            bearer = authorization
        else:
            bearer = f"Bearer {self._forwarded_token(identity)}"
        return [
            (b"authorization", bearer.encode("latin-1")),
            (b"x-bhiv-subject", quote(identity.subject, safe="@:._-").encode()),
            (b"x-bhiv-roles", quote(",".join(identity.roles), safe=",").encode()),
        ]

    def _forwarded_token(self, identity: Identity) -> str:
        now = time.time()
        # A JWT caller's own expiry bounds the minted token (an API key has none).
        caller_exp = identity.claims.get("exp") if identity.method == "jwt" else None
        if caller_exp is not None and not isinstance(caller_exp, int | float):
            caller_exp = None
        key = (identity.method, identity.subject, identity.roles, identity.tenant, caller_exp)
        cached = self._minted.get(key)
        if cached is not None and cached[1] - now > FORWARDED_TOKEN_TTL / 3:
            return cached[0]
        ttl = FORWARDED_TOKEN_TTL
        if caller_exp is not None:
            ttl = min(ttl, math.floor(caller_exp - now))
            if ttl < 1:
                raise Problem(
                    401,
                    "The token has expired.",
                    kind="unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="bhiv", error="invalid_token"'},
                )
        token = self.mint(identity, ttl)
        if ttl > FORWARDED_TOKEN_TTL / 3:
            self._minted[key] = (token, now + ttl)
        return token

    def mint(self, identity: Identity, ttl_seconds: int) -> str:
        private_key = self._settings.gateway_jwt_private_key
        if self._settings.jwt_public_key and private_key is None:
            raise Problem(
                503,
                "Tokens are verified with RS256 here, and no signing key is configured "
                "(BHIV_GATEWAY_JWT_PRIVATE_KEY).",
                kind="not-configured",
            )
        return mint_token(
            self._settings,
            subject=identity.subject,
            roles=list(identity.roles),
            ttl_seconds=ttl_seconds,
            tenant=identity.tenant,
            private_key=private_key.get_secret_value() if private_key else None,
        )


def _under(path: str, prefix: str) -> bool:
    if prefix == "/":
        return True
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")
