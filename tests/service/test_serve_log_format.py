"""`bhiv serve` with BHIV_LOG_FORMAT=text: the same records as human lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_http


def test_serve_writes_human_lines_when_asked(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    env.update(BHIV_DATA_DIR=str(tmp_path), BHIV_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "bhiv", "serve", "logistics", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(
                f"http://127.0.0.1:{port}/health", timeout=60, alive=lambda: serve.poll() is None
            )
            rid = httpx.get(f"http://127.0.0.1:{port}/health/ready").headers["X-Request-ID"]
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    output = (tmp_path / "serve.log").read_text()
    [line] = [line for line in output.splitlines() if f"rid={rid}" in line]
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d\.\d{{3}} INFO  logistics GET /health/ready 200 \d+\.\d ms  rid={rid}",
        line,
    ), line
    assert not any(line.startswith("{") for line in output.splitlines())
