"""Credentials a service's own background work presents when it calls another service.

A request handler forwards its caller's credentials (``bhiv.core.context``); a
worker, relay or scheduler has no caller, so it speaks for the service itself:
with a configured API key when there is one, otherwise with a short-lived JWT
signed with the shared HS256 secret. With RS256 (``BHIV_JWT_PUBLIC_KEY``) no
service holds a signing key, so an API key must be configured.
"""

from __future__ import annotations

from pydantic import SecretStr

from bhiv.core.auth import API_KEY_HEADER, Identity, mint_token
from bhiv.core.settings import ServiceSettings

# Long enough for one batch of calls, short enough that a leaked header is soon useless.
TOKEN_TTL_SECONDS = 300
# The subject a service's own credential carries: ``service:logistics``.
SERVICE_SUBJECT_PREFIX = "service:"


class MissingServiceCredential(RuntimeError):
    """RS256 is configured and no API key was given for background calls."""


def service_headers(
    settings: ServiceSettings, *, api_key: SecretStr | None = None, role: str = "editor"
) -> dict[str, str]:
    """Headers authenticating this service (subject ``service:<name>``) to a peer."""
    if api_key is not None:
        return {API_KEY_HEADER: api_key.get_secret_value()}
    if settings.jwt_public_key:
        raise MissingServiceCredential(
            f"{settings.service_name} verifies RS256 tokens and cannot sign its own; "
            "configure an API key for its background calls"
        )
    token = mint_token(
        settings,
        subject=f"{SERVICE_SUBJECT_PREFIX}{settings.service_name}",
        roles=[role],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )
    return {"Authorization": f"Bearer {token}"}


def service_of(identity: Identity) -> str | None:
    """The platform service ``identity`` speaks for, or None for a person or a client.

    A JWT speaks for service X when its subject is ``service:X``: only holders of the
    signing key mint such tokens (the services themselves, ``bhiv token``). An API key
    speaks for X when the operator named it ``service:X`` in ``BHIV_API_KEYS`` (needed
    with RS256, where services cannot sign); any other key or subject is not a service.
    """
    subject = identity.subject
    if identity.method == "api_key":
        subject = subject.removeprefix("apikey:")
    if subject.startswith(SERVICE_SUBJECT_PREFIX) and len(subject) > len(SERVICE_SUBJECT_PREFIX):
        return subject[len(SERVICE_SUBJECT_PREFIX) :]
    return None
