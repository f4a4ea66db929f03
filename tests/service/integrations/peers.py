"""Real HTTP peers on 127.0.0.1 for the integrations tests: a webhook receiver
whose answers a test scripts, and a paginated, cursor-based source API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; ``script[path]`` is a list of statuses answered in turn
    (the last one repeats), default 200. ``delay[path]`` seconds are slept first."""

    url: str = ""
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str) -> int:
        with self._lock:
            statuses = self.script.get(path) or [200]
            return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Received]:
        return wait_until(
            lambda: (got := self.at(path)) and len(got) >= count and got,
            timeout,
            f"{count} at {path}",
        )


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None) -> None:
        data = json.dumps(body if body is not None else {"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(_Quiet):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path
            with state._lock:
                state.received.append(
                    Received(path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            if path in state.delay:
                time.sleep(state.delay[path])
            self._send(state.answer(path))

    with _serve(Handler) as url:
        state.url = url
        yield state


@dataclass
class Source:
    """A vendor API: ``GET /vendors?updated_since=&limit=&cursor=`` with bearer auth.

    Records come in ``updated_at`` order; ``updated_since`` keeps those changed
    after it; the next-page token is opaque to the client.
    """

    token: str
    url: str = ""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every request's raw target, as received
    clock: int = 0
    fail_next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, **fields: Any) -> None:
        """Create or change a record; it gets the next ``updated_at``."""
        with self._lock:
            self.clock += 1
            record = self.records.setdefault(key, {"vendor_id": key})
            record.update(fields, updated_at=f"2026-01-01T00:00:{self.clock:02d}Z")

    def page(self, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(query)
            rows = sorted(self.records.values(), key=lambda r: r["updated_at"])
            since = query.get("updated_since")
            if since:
                rows = [r for r in rows if r["updated_at"] > since]
            start = int(query.get("cursor", "0").removeprefix("page-") or 0)
            size = int(query.get("limit", "100"))
            chunk = rows[start : start + size]
            more = start + size < len(rows)
            return {
                "data": {"vendors": [dict(r) for r in chunk]},
                "next": f"page-{start + size}" if more else None,
            }


@contextmanager
def source(token: str) -> Iterator[Source]:
    state = Source(token=token)

    class Handler(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            state.paths.append(self.path)
            parts = urlsplit(self.path)
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._send(401, {"error": "bad token"})
                return
            if parts.path == "/health":
                self._send(200, {"ok": True})
                return
            if parts.path != "/vendors":
                self._send(404)
                return
            if state.fail_next:
                state.fail_next -= 1
                self._send(503)
                return
            self._send(200, state.page({k: v[0] for k, v in parse_qs(parts.query).items()}))

    with _serve(Handler) as url:
        state.url = url
        yield state
