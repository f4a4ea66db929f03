"""A real HTTP upstream for gateway tests: echoes, streams, stalls and fails on demand.

Served by uvicorn on a free loopback port (in a thread), so the tests can also
watch what it received as it happens (``Upstream.progress``) — that is how they
prove the gateway streams bodies instead of holding them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.inprocess import serve


@dataclass
class Upstream:
    name: str
    url: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    # Bytes of the current /upload body received so far, and a gate the test
    # opens to let /download continue past its first chunk.
    progress: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    healthy: bool = True
    failing: int = 0  # when set, every API request is answered with this status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, key: str) -> int:
        with self.lock:
            self.hits[key] = self.hits.get(key, 0) + 1
            return self.hits[key]


def _query(scope: dict) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode()))


def make_app(state: Upstream):  # noqa: ANN201 - an ASGI app
    async def respond(
        send,
        status: int,
        body: bytes,
        headers: list | None = None,
        ctype: bytes = b"application/json",
    ):
        if status in (204, 304):
            body = b""
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        q = _query(scope)
        if path in ("/health", "/health/ready"):
            await respond(send, 200 if state.healthy else 503, b'{"status": "ok"}')
            return
        if state.failing:
            state.hit("failing")
            await respond(send, state.failing, b'{"failing": true}')
            return
        if path == "/openapi.json":
            doc = {
                "openapi": "3.1.0",
                "info": {"title": f"upstream {state.name}", "version": "1.0"},
                "paths": {
                    "/echo/{rest}": {
                        "get": {
                            "operationId": "echo",
                            "tags": ["echo"],
                            "responses": {
                                "200": {
                                    "description": "ok",
                                    "content": {
                                        "application/json": {
                                            "schema": {"$ref": "#/components/schemas/Echo"}
                                        }
                                    },
                                }
                            },
                        }
                    }
                },
                "components": {"schemas": {"Echo": {"type": "object"}}},
                "tags": [{"name": "echo", "description": "Echoes."}],
            }
            await respond(send, 200, json.dumps(doc).encode())
            return
        if path.startswith("/upload"):
            digest = hashlib.sha256()
            size = chunks = 0
            state.progress["upload"] = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                digest.update(chunk)
                size += len(chunk)
                chunks += 1 if chunk else 0
                state.progress["upload"] = size
                more = message.get("more_body", False)
            await respond(
                send,
                200,
                json.dumps({"size": size, "sha256": digest.hexdigest(), "chunks": chunks}).encode(),
            )
            return
        if path.startswith("/download"):
            size, chunk = int(q.get("size", "1048576")), int(q.get("chunk", "65536"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            sent = 0
            first = True
            while sent < size:
                n = min(chunk, size - sent)
                await send({"type": "http.response.body", "body": b"x" * n, "more_body": True})
                sent += n
                if first and q.get("wait") == "1":
                    first = False
                    # Hold the rest until the test has seen the first chunk arrive.
                    # A threading.Event the test thread sets: asyncio.Event is not thread-safe.
                    while not state.release.is_set():  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b""})
            return
        if path.startswith("/slow"):
            await asyncio.sleep(float(q.get("seconds", "5")))
            await respond(send, 200, b'{"slow": true}')
            return
        if path.startswith("/flaky/"):
            n = state.hit(path)
            if n <= int(q.get("fail", "1")):
                await respond(send, int(q.get("status", "503")), b'{"flaky": "failing"}')
            else:
                await respond(
                    send, 200, json.dumps({"attempts": n, "instance": state.name}).encode()
                )
            return
        if path.startswith("/redirect"):
            await respond(send, 302, b"{}", [(b"location", q.get("to", "/").encode())])
            return
        if path.startswith("/status/"):
            state.hit(path)
            await respond(
                send, int(path.rsplit("/", 1)[1]), json.dumps({"instance": state.name}).encode()
            )
            return
        # Anything else: echo the request as received.
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        state.hit(path)
        echo = {
            "instance": state.name,
            "method": scope["method"],
            "path": path,
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
        extra = [
            (b"x-upstream", state.name.encode()),
            (b"set-cookie", b"session=abc; Path=/"),
            (b"connection", b"x-hop"),
            (b"x-hop", b"drop me"),
            (b"access-control-allow-origin", b"*"),
        ]
        await respond(send, int(q.get("status", "200")), json.dumps(echo).encode(), extra)

    return app


@contextmanager
def upstream(name: str) -> Iterator[Upstream]:
    state = Upstream(name)
    with serve(make_app(state)) as url:
        state.url = url
        yield state
