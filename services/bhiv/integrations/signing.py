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
import secrets
import time

from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# The spec: "at least 24 bytes (192 bits, 512 maximum)".
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class SignatureError(Exception):
    """The message is not authentic (or not fresh); the reason is safe to show."""


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
        raise ValueError(f"the key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}")
    return value


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    when = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_seconds: int) -> None:
    """Raise :class:`SignatureError` unless ``body`` was signed with ``secret`` recently."""
    msg_id, stamp, signature = (headers.get(name, "") for name in HEADERS)
    if not stamp.isdigit():
        raise SignatureError("webhook-timestamp must be Unix seconds")
    if abs(time.time() - int(stamp)) > tolerance_seconds:
        raise SignatureError(f"webhook-timestamp is more than {tolerance_seconds} seconds from now")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise SignatureError("the body is not UTF-8 text, so it cannot carry a Standard Webhooks signature") from None
    try:
        Webhook(secret).verify(
            text,
            {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature},
            json_parse=False,
        )
    except WebhookVerificationError:
        raise SignatureError("no signature in webhook-signature matches the body") from None
    except (ValueError, binascii.Error):
        # The library unpacks "v1,<sig>" pairs and base64 without guarding them.
        raise SignatureError("webhook-signature must be space-separated 'v1,<base64>' entries") from None
