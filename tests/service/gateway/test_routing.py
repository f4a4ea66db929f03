"""Routing over real HTTP: requests arrive at the service as sent, bodies stream both ways."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import httpx

from tests.service.gateway.upstream import Upstream


def header(echo: dict, name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


def test_method_path_query_headers_and_body_pass_through(api: httpx.Client) -> None:
    r = api.request(
        "PATCH",
        "/api/echo/items/a%2Fb%20c/x",
        params=[("q", "one two"), ("q", "ü"), ("empty", "")],
        headers={"X-Custom": "kept", "Content-Type": "text/plain", "X-Request-ID": "trace-7"},
        content=b"hello \x00 world",
    )
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["method"] == "PATCH"
    # The path below the prefix, percent-encoding untouched.
    assert echo["raw_path"] == "/items/a%2Fb%20c/x"
    assert echo["query"] == "q=one+two&q=%C3%BC&empty="
    assert echo["body"] == "hello \x00 world"
    assert header(echo, "x-custom") == ["kept"] and header(echo, "content-type") == ["text/plain"]
    # The request ID travels on and comes back once.
    assert header(echo, "x-request-id") == ["trace-7"] and r.headers.get_list("x-request-id") == [
        "trace-7"
    ]
    assert r.headers["x-upstream"] in ("a", "b")


def test_forwarded_headers_and_hop_by_hop(api: httpx.Client) -> None:
    r = api.get(
        "/api/echo/h",
        headers={
            "X-Forwarded-For": "198.18.0.1, 203.0.113.9",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-BHIV-Subject": "spoofed",
            "Host": "api.example.com",
        },
    )
    echo = r.json()
    names = {k for k, _ in echo["headers"]}
    assert not names & {"x-secret-hop", "keep-alive", "te", "proxy-connection"}
    # The test client is on 127.0.0.1, a trusted proxy by default: the rightmost
    # untrusted X-Forwarded-For entry is the client; the chain goes on from it,
    # with the proxy appended (what was left of it, the client wrote itself).
    assert header(echo, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    plain = api.get("/api/echo/h").json()
    assert header(plain, "x-forwarded-for") == ["127.0.0.1"]
    assert header(echo, "x-forwarded-proto") == ["http"]
    assert header(echo, "x-forwarded-host") == ["api.example.com"]
    assert header(echo, "x-forwarded-prefix") == ["/api/echo"]
    assert header(echo, "x-bhiv-subject") == ["tester"]  # the gateway's, not the client's
    # The upstream's hop-by-hop headers (and those its Connection names) stop at the gateway;
    # its own CORS headers give way to the edge's policy; its cookies reach the client.
    assert "x-hop" not in r.headers and "access-control-allow-origin" not in r.headers
    assert r.headers["set-cookie"] == "session=abc; Path=/"
    assert len(r.headers.get_list("date")) == 1 and len(r.headers.get_list("server")) == 1


def test_cookies_are_not_kept_by_the_gateway(api: httpx.Client) -> None:
    api.get("/api/echo/set-cookie")
    r = httpx.get(
        f"{api.base_url}/api/echo/again", headers={"Authorization": api.headers["Authorization"]}
    )
    assert header(r.json(), "cookie") == []


def test_prefix_alone_and_unknown_prefixes(api: httpx.Client) -> None:
    assert api.get("/api/echo").json()["path"] == "/"
    for path in ("/api/nope", "/api/echoes/x", "/api/", "/api"):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404 and r.json()["instance"] == path


def test_head_and_status_codes_pass_through(api: httpx.Client) -> None:
    r = api.head("/api/echo/x")
    assert r.status_code == 200 and r.content == b""
    assert api.get("/api/echo/x", params={"status": "418"}).status_code == 418
    assert api.delete("/api/solo/status/204").status_code == 204


def test_large_upload_is_streamed_not_buffered(api: httpx.Client, solo: Upstream) -> None:
    """The service sees the first chunk while the client is still sending: nothing held it."""
    size = 3 * 1024 * 1024
    chunk = b"z" * (256 * 1024)
    seen_first: list[int] = []

    def body() -> Iterator[bytes]:
        yield chunk
        deadline = time.monotonic() + 10
        while solo.progress.get("upload", 0) < len(chunk) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_first.append(solo.progress.get("upload", 0))
        for _ in range(size // len(chunk) - 1):
            yield chunk

    r = api.post(
        "/api/solo/upload", content=body(), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    assert seen_first and seen_first[0] >= len(chunk)
    assert (
        r.json()["size"] == size and r.json()["sha256"] == hashlib.sha256(b"z" * size).hexdigest()
    )


def test_large_download_is_streamed(api: httpx.Client, solo: Upstream) -> None:
    solo.release.clear()
    got_first = threading.Event()
    received = 0
    with api.stream("GET", "/api/solo/download", params={"size": 2 * 1024 * 1024, "wait": 1}) as r:
        assert r.status_code == 200 and "content-length" not in r.headers
        for part in r.iter_raw():
            received += len(part)
            if not got_first.is_set():
                # The service is holding the rest until we say so: this chunk came through alone.
                got_first.set()
                assert received < 2 * 1024 * 1024
                solo.release.set()
    assert received == 2 * 1024 * 1024


def test_body_limits(api: httpx.Client) -> None:
    limit = 4 * 1024 * 1024
    declared = api.post("/api/solo/upload", content=b"x" * (limit + 1))
    assert declared.status_code == 413 and declared.json()["type"].endswith("/payload-too-large")

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    streamed = api.post("/api/solo/upload", content=chunks())
    assert streamed.status_code == 413
    # The gateway's own endpoints keep the framework's 1 MiB limit.
    assert api.post("/batch", content=b"x" * (2 * 1024 * 1024)).status_code == 413
