"""Authentication (JWT, API keys) and role-based authorization.

Roles map to permissions; a route needs ``read`` for safe methods and ``write``
otherwise, unless it asks for more with :func:`require`. A missing or invalid
credential is 401 (with ``WWW-Authenticate``); a valid one without the needed
permission is 403. Credentials are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from fastapi import Depends, Request

from bhiv.core.errors import Problem
from bhiv.core.roles import ROLE_PERMISSIONS, Permission, method_permission
from bhiv.core.settings import ApiKeySpec, ServiceSettings

API_KEY_HEADER = "X-API-Key"
# OpenAPI extension marking an operation that needs no credential (it proves
# its caller some other way, e.g. a webhook signature). The gateway reads it
# from each service's /openapi.json and lets such requests through without
# one, so a service declares its own public operations.
PUBLIC_OPERATION = "x-bhiv-public"


def public_operation(openapi_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route reachable without a credential (the route itself must not require one)."""
    return {**(openapi_extra or {}), PUBLIC_OPERATION: True}


# The Standard Webhooks headers a signed delivery carries.
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def signed_webhook_operation() -> dict[str, Any]:
    """``openapi_extra`` for a public route that takes a Standard Webhooks-signed JSON body
    (it reads the raw body itself, so the body and headers are declared here)."""
    return public_operation(
        {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "parameters": [
                {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                for name in WEBHOOK_HEADERS
            ],
        }
    )


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: tuple[str, ...]
    method: Literal["jwt", "api_key"]
    tenant: str | None = None
    claims: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def permissions(self) -> frozenset[str]:
        perms: set[str] = set()
        for role in self.roles:
            perms |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(perms)


def mint_token(
    settings: ServiceSettings,
    *,
    subject: str,
    roles: list[str],
    ttl_seconds: int = 3600,
    tenant: str | None = None,
    private_key: str | None = None,
) -> str:
    """Sign a JWT: HS256 with the shared secret, or RS256 when given a private key."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "roles": roles,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": secrets.token_hex(8),
    }
    if tenant:
        claims["tenant"] = tenant
    if private_key:
        return jwt.encode(claims, private_key, algorithm="RS256")
    return jwt.encode(claims, settings.jwt_signing_secret(), algorithm="HS256")


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# Verified tokens remembered per Authenticator (a client reuses its token for many
# requests); the oldest are forgotten first beyond this many.
VERIFIED_TOKEN_CACHE_SIZE = 10_000


class Authenticator:
    """Resolves the caller of a request from its headers, for one service's settings.

    A token that verified is remembered until its ``exp``, so a client reusing it costs
    a dictionary lookup instead of a signature check and claim validation. Only valid
    tokens are remembered, keyed by the whole token; the key, issuer and audience are
    fixed for the Authenticator's life, so the same token always gets the same answer
    until it expires (a cached one is dropped at its ``exp`` and checked again: refused).
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self._algorithm, self._key = settings.jwt_verification_key()
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._api_keys: list[ApiKeySpec] = list(settings.api_keys)
        # Plain dict (insertion-ordered): every operation on it is atomic under the
        # GIL, so handlers on worker threads may share it without a lock.
        self._verified: dict[str, tuple[Identity, float]] = {}

    def authenticate(self, request: Request) -> Identity:
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key is not None:
            return self._from_api_key(api_key)
        header = request.headers.get("Authorization")
        if not header:
            raise _unauthorized(
                "Authentication required: send 'Authorization: Bearer <JWT>' or 'X-API-Key'."
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("The Authorization header must be 'Bearer <JWT>'.")
        return self._from_jwt(token.strip())

    def _from_jwt(self, token: str) -> Identity:
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if time.time() < expires:  # PyJWT's rule too: expired once now >= exp
                return identity
            self._verified.pop(token, None)
        identity = self._verify(token)
        exp = identity.claims.get("exp")
        if isinstance(exp, int | float):
            self._verified[token] = (identity, float(exp))
            if len(self._verified) > VERIFIED_TOKEN_CACHE_SIZE:
                try:
                    self._verified.pop(next(iter(self._verified)), None)
                except (RuntimeError, StopIteration):  # another thread changed it meanwhile
                    pass
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired.", error="invalid_token") from None
        except jwt.InvalidTokenError as exc:
            # The library's message says what is wrong (signature, audience, ...)
            # and never echoes the token itself.
            raise _unauthorized(f"The token is not valid: {exc}.", error="invalid_token") from None
        roles = claims.get("roles", [])
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise _unauthorized(
                "The token's 'roles' claim must be a list of strings.", error="invalid_token"
            )
        tenant = claims.get("tenant")
        return Identity(
            subject=str(claims["sub"]),
            roles=tuple(roles),
            method="jwt",
            tenant=str(tenant) if tenant is not None else None,
            claims=claims,
        )

    def _from_api_key(self, presented: str) -> Identity:
        digest = hash_api_key(presented)
        match: ApiKeySpec | None = None
        # Compare against every configured key, so the time taken does not
        # reveal which (if any) key shares a prefix with the presented one.
        for spec in self._api_keys:
            if hmac.compare_digest(digest, spec.sha256):
                match = spec
        if match is None:
            raise _unauthorized("The API key is not valid.", error="invalid_token")
        return Identity(subject=f"apikey:{match.name}", roles=(match.role,), method="api_key")


def _unauthorized(detail: str, *, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="bhiv"' + (f', error="{error}"' if error else "")
    return Problem(401, detail, kind="unauthorized", headers={"WWW-Authenticate": challenge})


async def current_identity(request: Request) -> Identity:
    """FastAPI dependency: the authenticated caller (401 when there is none)."""
    cached: Identity | None = getattr(request.state, "identity", None)
    if cached is not None:
        return cached
    identity: Identity = request.app.state.authenticator.authenticate(request)
    request.state.identity = identity
    return identity


def _check(identity: Identity, permission: str) -> Identity:
    if permission not in identity.permissions:
        roles = ", ".join(identity.roles) or "none"
        raise Problem(
            403,
            f"This action needs the '{permission}' permission; your roles ({roles}) do not grant it.",
            kind="forbidden",
        )
    return identity


async def authorize_by_method(
    request: Request, identity: Identity = Depends(current_identity)
) -> Identity:
    """Router-wide dependency: ``read`` for safe methods, ``write`` for the rest."""
    return _check(identity, method_permission(request.method))


def require(permission: Permission) -> Callable[..., Awaitable[Identity]]:
    """A dependency for routes that need more than their method implies (e.g. admin)."""

    async def dependency(identity: Identity = Depends(current_identity)) -> Identity:
        return _check(identity, permission)

    return dependency
