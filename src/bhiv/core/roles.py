"""Roles, their permissions, and what each HTTP method asks of them.

One model for the services (``bhiv.core.auth``), the gateway's edge checks and
every client that retries: a viewer reads, an editor also writes, an admin also
administers; a safe method needs ``read`` and any other ``write``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Permission = Literal["read", "write", "admin"]

# Weakest first: each role holds every permission of the roles before it.
ROLES: tuple[str, ...] = ("viewer", "editor", "admin")
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "editor": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}

# Methods that change nothing (RFC 9110 §9.2.1; TRACE is served by no BHIV route):
# a viewer may call them, and a read-only database session serves them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Methods whose repetition has the effect of one call (RFC 9110 §9.2.2): a client may
# send them again after an attempt whose outcome it does not know.
IDEMPOTENT_METHODS = SAFE_METHODS | {"PUT", "DELETE"}


def method_permission(method: str) -> Permission:
    """What a request with ``method`` needs when nothing more is said about it."""
    return "read" if method.upper() in SAFE_METHODS else "write"


def satisfies(roles: Iterable[str], needed: str) -> bool:
    """Whether any of ``roles`` is ``needed`` or a stronger role."""
    rank = ROLES.index(needed)
    return any(role in ROLES and ROLES.index(role) >= rank for role in roles)
