"""Standard Webhooks signatures, for inbound verification and outbound signing.

The scheme: ``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``
keyed with the secret ``whsec_<base64 key>``; several space-separated signatures
may be sent (key rotation); the timestamp is Unix seconds. The HMAC and the
constant-time comparison are the spec's own reference library
(``standardwebhooks``), so what we sign any Standard Webhooks consumer verifies
and vice versa. This module adds what the library leaves to its caller:
malformed headers become a refusal rather than a crash, the tolerance comes
from settings, and secrets are generated and checked here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from bhiv.core.auth import WEBHOOK_HEADERS

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 32
# The spec: "at least 24 bytes (192 bits, 512 maximum)".
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
HEADERS = WEBHOOK_HEADERS


class SignatureError(Exception):
    """The message is not authentic (or not fresh); the reason is safe to show."""


class MalformedHeader(ValueError):
    """A webhook header is missing or not in the spec's form (400, naming it)."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason


# The headers' grammar, ASCII only and bounded: Python's str.isdigit() and
# int() accept Unicode digits ("²³", "٣"), which let a malformed timestamp
# through to a crash; these patterns accept exactly what the spec describes.
MAX_ID_CHARS = 255
MAX_SIGNATURE_CHARS = 2048
_ID = re.compile(rf"[\x21-\x7e](?:[\x20-\x7e]{{0,{MAX_ID_CHARS - 2}}}[\x21-\x7e])?")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds: 10 digits until 2286
_SIGNATURE = re.compile(
    r"[a-z0-9]{1,8},[A-Za-z0-9+/=_-]{1,512}(?: [a-z0-9]{1,8},[A-Za-z0-9+/=_-]{1,512})*"
)


@dataclass(frozen=True)
class WebhookHeaders:
    """The three Standard Webhooks headers of one message, parsed."""

    msg_id: str
    timestamp: int
    signature: str


def parse_headers(headers: Mapping[str, str]) -> WebhookHeaders:
    """The headers in their strict form, or :class:`MalformedHeader` naming the first bad one.

    ``headers`` has lower-case names. Values are never echoed back: they are
    attacker-written text.
    """
    values = {name: headers.get(name, "") for name in HEADERS}
    for name, value in values.items():
        if not value:
            raise MalformedHeader(name, "is required (Standard Webhooks)")
    if not _ID.fullmatch(values["webhook-id"]):
        raise MalformedHeader(
            "webhook-id", f"must be 1 to {MAX_ID_CHARS} printable ASCII characters"
        )
    if not _TIMESTAMP.fullmatch(values["webhook-timestamp"]):
        raise MalformedHeader("webhook-timestamp", "must be Unix seconds: 1 to 12 ASCII digits")
    signature = values["webhook-signature"]
    if len(signature) > MAX_SIGNATURE_CHARS or not _SIGNATURE.fullmatch(signature):
        raise MalformedHeader(
            "webhook-signature",
            "must be space-separated '<version>,<base64>' entries (e.g. 'v1,...'),"
            f" at most {MAX_SIGNATURE_CHARS} characters",
        )
    return WebhookHeaders(values["webhook-id"], int(values["webhook-timestamp"]), signature)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def given_or_new(given: SecretStr | None) -> str:
    """The secret a client chose (already checked), or a fresh one."""
    return given.get_secret_value() if given is not None else new_secret()


def check_secret(value: str) -> str:
    """A pydantic validator: ``whsec_`` + base64 of 24 to 64 random bytes."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with '{SECRET_PREFIX}'")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be '{SECRET_PREFIX}' followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return value


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    when = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verify(secret: str, headers: WebhookHeaders, body: bytes, *, tolerance_seconds: int) -> None:
    """Raise :class:`SignatureError` unless ``body`` was signed with ``secret`` recently."""
    if abs(time.time() - headers.timestamp) > tolerance_seconds:
        raise SignatureError(f"webhook-timestamp is more than {tolerance_seconds} seconds from now")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise SignatureError(
            "the body is not UTF-8 text, so it cannot carry a Standard Webhooks signature"
        ) from None
    try:
        Webhook(secret).verify(
            text,
            {
                "webhook-id": headers.msg_id,
                "webhook-timestamp": str(headers.timestamp),
                "webhook-signature": headers.signature,
            },
            json_parse=False,
        )
    except WebhookVerificationError:
        raise SignatureError("no signature in webhook-signature matches the body") from None
