from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request

from bhiv.core.auth import Authenticator, Identity, hash_api_key, mint_token
from bhiv.core.errors import Problem
from bhiv.core.settings import ApiKeySpec, ServiceSettings

SECRET = "unit-test-secret-unit-test-secret-0123"


def request_with(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request(
        {"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""}
    )


def settings(**kw: object) -> ServiceSettings:
    return ServiceSettings(jwt_secret=SECRET, **kw)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_hs256_round_trip() -> None:
    s = settings()
    token = mint_token(s, subject="ana", roles=["editor"], tenant="acme")
    who = Authenticator(s).authenticate(request_with(bearer(token)))
    assert (who.subject, who.roles, who.tenant, who.method) == ("ana", ("editor",), "acme", "jwt")
    assert who.permissions == {"read", "write"}


@pytest.mark.parametrize(
    ("role", "perms"),
    [
        ("viewer", {"read"}),
        ("editor", {"read", "write"}),
        ("admin", {"read", "write", "admin"}),
        ("nobody", set()),
    ],
)
def test_role_permissions(role: str, perms: set[str]) -> None:
    assert Identity(subject="x", roles=(role,), method="jwt").permissions == perms


def _reject(
    headers: dict[str, str], s: ServiceSettings | None = None, auth: Authenticator | None = None
) -> Problem:
    with pytest.raises(Problem) as info:
        (auth or Authenticator(s or settings())).authenticate(request_with(headers))
    assert info.value.status == 401
    assert info.value.headers and info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value


def test_missing_credentials() -> None:
    assert "Authentication required" in _reject({}).detail


def test_expired_token() -> None:
    token = mint_token(settings(), subject="ana", roles=["admin"], ttl_seconds=1)
    time.sleep(1.1)
    problem = _reject(bearer(token))
    assert "expired" in problem.detail and token not in problem.detail


def test_wrong_secret_audience_and_garbage() -> None:
    other = ServiceSettings(jwt_secret="another-secret-another-secret-012345")
    _reject(bearer(mint_token(other, subject="a", roles=["admin"])))
    _reject(bearer(mint_token(settings(jwt_audience="elsewhere"), subject="a", roles=["admin"])))
    _reject(bearer("not.a.jwt"))
    _reject({"Authorization": "Basic dXNlcjpwYXNz"})


def test_alg_none_is_rejected() -> None:
    unsigned = jwt.encode(
        {"sub": "a", "roles": ["admin"], "exp": time.time() + 60, "aud": "bhiv", "iss": "bhiv"},
        None,  # type: ignore[arg-type]  # PyJWT's stub wants a key even for "none"
        algorithm="none",
    )
    _reject(bearer(unsigned))


def test_roles_claim_must_be_strings() -> None:
    token = jwt.encode(
        {"sub": "a", "roles": [1], "exp": time.time() + 60, "aud": "bhiv", "iss": "bhiv"},
        SECRET,
        algorithm="HS256",
    )
    _reject(bearer(token))


def test_rs256_with_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    s = ServiceSettings(jwt_public_key=public)
    token = mint_token(s, subject="svc", roles=["viewer"], private_key=private)
    assert Authenticator(s).authenticate(request_with(bearer(token))).subject == "svc"
    # An HS256 token is refused when a public key is configured (algorithm confusion).
    # (PyJWT will not sign with a PEM public key, so any long-enough secret stands in.)
    forged = jwt.encode(
        {"sub": "x", "roles": ["admin"], "exp": time.time() + 60}, "forged-" * 6, algorithm="HS256"
    )
    _reject(bearer(forged), s)


def test_api_keys() -> None:
    s = settings(api_keys=[ApiKeySpec(name="ci", role="editor", sha256=hash_api_key("k-123"))])
    who = Authenticator(s).authenticate(request_with({"X-API-Key": "k-123"}))
    assert (who.subject, who.roles, who.method) == ("apikey:ci", ("editor",), "api_key")
    problem = _reject({"X-API-Key": "k-124"}, s)
    assert "k-124" not in problem.detail


def test_a_verified_token_is_checked_once_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    token = mint_token(s, subject="ana", roles=["viewer"], ttl_seconds=1)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    auth = Authenticator(s)
    decodes: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    for _ in range(3):
        assert auth.authenticate(request_with(bearer(token))).subject == "ana"
    assert len(decodes) == 1  # the signature was verified once
    # Once past its exp the cached identity is not used: the token is checked again, and refused.
    while time.time() < exp:
        time.sleep(0.05)
    problem = _reject(bearer(token), s, auth)
    assert "expired" in problem.detail and len(decodes) == 2
    # A bad token is never cached: each attempt is checked (and refused) again.
    other = ServiceSettings(jwt_secret="another-secret-another-secret-0123")  # noqa: S106
    tampered = mint_token(other, subject="x", roles=["admin"])
    for _ in range(2):
        _reject(bearer(tampered), s, auth)
    assert len(decodes) == 4
