"""Fuzzing the public webhook endpoint's three Standard Webhooks headers over real
HTTP: whatever bytes a sender puts there, the answer is a 4xx problem (or a
202/200 for a genuinely valid message), never a server error."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.integrations.helpers import new_source
from tests.service.integrations.test_inbound import signed
from tests.support.servers import ServiceProcess

BODY = b'{"type": "fuzz.test"}'

# Bytes HTTP/1.1 lets a header value carry (visible ASCII, space, tab, obs-text
# 0x80-0xFF); the server decodes them as Latin-1, so 0xB2 arrives as "²".
FIELD_BYTES = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if b in b"\t " or 0x21 <= b <= 0x7E or b >= 0x80).strip(b" \t")
)
UNICODE_DIGITS = st.text(
    alphabet=st.characters(categories=["Nd", "No"], max_codepoint=0xFF), min_size=1, max_size=12
).map(lambda text: text.encode("latin-1"))
NEAR_MISS_TIMESTAMPS = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15).map(lambda n: str(n).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.just(str(int(time.time())).encode()),
)
SIGNATURE_SHAPES = st.lists(
    st.tuples(st.sampled_from(["v1", "v1a", "v2", "", "V1", "v1,"]), st.binary(max_size=40)),
    max_size=5,
).map(lambda parts: b" ".join(v.encode() + b"," + base64.b64encode(p) for v, p in parts))

VALUE = st.one_of(st.none(), FIELD_BYTES, UNICODE_DIGITS, NEAR_MISS_TIMESTAMPS, SIGNATURE_SHAPES)


@pytest.fixture(scope="module")
def fuzz_source(integrations: ServiceProcess) -> dict[str, Any]:
    return new_source(integrations.client())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(msg_id=VALUE, stamp=VALUE, signature=VALUE)
def test_no_header_value_makes_a_server_error(
    integrations: ServiceProcess,
    fuzz_source: dict[str, Any],
    msg_id: bytes | None,
    stamp: bytes | None,
    signature: bytes | None,
) -> None:
    headers: dict[str, str | bytes] = dict(signed(fuzz_source["secret"], BODY))
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", stamp),
        ("webhook-signature", signature),
    ):
        if value is not None:  # None keeps the genuine header, so the others are checked past it
            headers[name] = value
    r = httpx.post(
        f"{integrations.url}/webhooks/{fuzz_source['name']}",
        content=BODY,
        headers=headers,  # type: ignore[arg-type]  # str and raw bytes values, on purpose
        timeout=30,
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        if r.status_code == 400:
            assert r.json()["errors"][0]["field"] in (
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
            )
    else:
        assert r.status_code in (200, 202)
