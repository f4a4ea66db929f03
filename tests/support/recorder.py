"""A recording upstream for tests: real HTTP on 127.0.0.1, in a thread of the test process.

Every call is recorded with the replica that made it and the reference in its body,
so a test sees a side effect made twice, or by two replicas. Each replica is pointed
at its own path prefix (``url_for("r1")`` -> ``http://127.0.0.1:PORT/r1``), which is how
the recorder tells replicas apart.

- ``POST /{replica}/effects`` ``{"reference": ...}`` creates an effect, once per reference:
  a second one is a 409 problem whose ``errors[]`` says ``unique`` (as BHIV services
  answer a duplicate key), so a workflow step can create-or-get it.
  With :meth:`Recorder.hold` set for a reference, the effect is created and the answer
  is held back until :meth:`Recorder.release` (a step in flight, its side effect done);
  with ``"delay": seconds`` in the body, the answer comes that much later (a long step).
- ``GET /{replica}/effects?reference=...``: ``{"items": [...], "total": n}``.
- ``POST /{replica}/work``: a task's call; answers ``{"done": reference}`` (held or
  delayed likewise).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.app_thread import AppThread
from tests.support.net import free_port


@dataclass(frozen=True)
class Call:
    replica: str
    method: str
    path: str
    reference: str | None
    at: float  # time.monotonic() when the call arrived


class Recorder:
    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[Call] = []
        self.effects: dict[str, dict[str, Any]] = {}
        self._holds: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._runner: AppThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, replica: str) -> str:
        return f"{self.url}/{replica}"

    def hold(self, reference: str) -> None:
        with self._lock:
            self._holds[reference] = threading.Event()

    def release(self, reference: str) -> None:
        with self._lock:
            event = self._holds.pop(reference, None)
        if event is not None:
            event.set()

    def calls_to(self, method: str, path: str, reference: str | None = None) -> list[Call]:
        """Calls made, oldest first; ``reference``: only those about it."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.method == method
                and c.path == path
                and (reference is None or c.reference == reference)
            ]

    def start(self) -> Recorder:
        self._runner = AppThread(self._app(), self.port, "recorder").start()
        return self

    def stop(self) -> None:
        with self._lock:
            holds = list(self._holds.values())
            self._holds.clear()
        for event in holds:
            event.set()
        if self._runner is not None:
            self._runner.stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _record(self, replica: str, method: str, path: str, reference: str | None) -> None:
        with self._lock:
            self.calls.append(Call(replica, method, path, reference, time.monotonic()))

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/{replica}/effects")
        async def create(replica: str, request: Request) -> Any:
            body = await request.json()
            reference = str(body.get("reference"))
            self._record(replica, "POST", "/effects", reference)
            with self._lock:
                if reference in self.effects:
                    return JSONResponse(
                        {
                            "type": "https://bhiv.io/problems/conflict",
                            "title": "Conflict",
                            "status": 409,
                            "detail": f"effect {reference!r} exists",
                            "errors": [{"field": "reference", "type": "unique"}],
                        },
                        status_code=409,
                        media_type="application/problem+json",
                    )
                effect = {"id": len(self.effects) + 1, "reference": reference, "replica": replica}
                self.effects[reference] = effect
                held = self._holds.get(reference)
            if held is not None:
                # The effect exists; its answer waits (the caller may die meanwhile).
                await asyncio.to_thread(held.wait, 60)
            await asyncio.sleep(float(body.get("delay") or 0))
            return JSONResponse(effect, status_code=201)

        @app.get("/{replica}/effects")
        async def find(replica: str, reference: str) -> dict[str, Any]:
            self._record(replica, "GET", "/effects", reference)
            with self._lock:
                items = [self.effects[reference]] if reference in self.effects else []
            return {"items": items, "total": len(items)}

        @app.post("/{replica}/work")
        async def work(replica: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            reference = str(body.get("reference"))
            self._record(replica, "POST", "/work", reference)
            with self._lock:
                held = self._holds.get(reference)
            if held is not None:
                await asyncio.to_thread(held.wait, 60)
            await asyncio.sleep(float(body.get("delay") or 0))
            return {"done": reference}

        return app
