"""Secrets at rest: connection credentials and webhook signing secrets are stored
as Fernet tokens (AES-128-CBC with HMAC-SHA256, from ``cryptography``).

The configured secrets are arbitrary strings, so each is stretched into a
Fernet key with HKDF. Several secrets make a MultiFernet: the first encrypts,
any decrypts, so a key can be rotated without losing what was stored under the
old one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"bhiv-integrations/credentials/v1"


class UnreadableSecret(Exception):
    """A stored secret does not decrypt with any configured key (the key changed)."""


def _fernet(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


@contextmanager
def _readable() -> Iterator[None]:
    try:
        yield
    except InvalidToken:
        raise UnreadableSecret(
            "a stored secret cannot be decrypted with the configured credentials key"
        ) from None


class SecretBox:
    def __init__(self, secrets: list[str]) -> None:
        if not secrets:
            raise ValueError("at least one encryption secret is needed")
        self._fernet = MultiFernet([_fernet(s) for s in secrets])

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        with _readable():
            return self._fernet.decrypt(token.encode()).decode()

    def reseal(self, token: str) -> str:
        """The same secret sealed with the first key (MultiFernet.rotate): after a
        key rotation, what was sealed with an old key no longer needs it."""
        with _readable():
            return self._fernet.rotate(token.encode()).decode()

    def seal_json(self, value: dict[str, Any]) -> str:
        return self.seal(json.dumps(value, separators=(",", ":")))

    def open_json(self, token: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.open(token))
        return value
