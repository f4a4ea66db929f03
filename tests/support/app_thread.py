"""An ASGI app served over real HTTP on 127.0.0.1 by uvicorn, in a thread of the test
process, so a test scripts and inspects it directly while services run in their own
processes (tests.support.fake_openai, tests.support.recorder)."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.support.net import wait_http


class AppThread:
    def __init__(self, app: Any, port: int, name: str) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="off",
        )
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def start(self) -> AppThread:
        """Serve, and wait until ``GET /health`` answers."""
        self._thread.start()
        wait_http(f"{self.url}/health", timeout=15, alive=self._thread.is_alive)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
