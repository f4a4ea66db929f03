"""`bhiv up` in a child process, under a free port offset, as the tests run it."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bhiv import catalog
from tests.support.net import LISTEN_PORTS_FROM, ephemeral_start, wait_http
from tests.support.servers import stop_process


def free_offset() -> int:
    """A port offset under which every catalog port is free on 127.0.0.1, and below the
    kernel's ephemeral range (tests.support.net: an outgoing connection may take a port
    in it between this check and the service's bind; it did, failing `bhiv up`)."""
    ports = [e.port for e in catalog.SERVICES.values()]
    lowest, highest = LISTEN_PORTS_FROM - min(ports), ephemeral_start() - max(ports) - 1
    for _ in range(50):
        offset = random.randrange(lowest, highest, 10)  # noqa: S311 - not for security
        ports = [e.port + offset for e in catalog.SERVICES.values()]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return offset
    raise RuntimeError("no free port range")


def up_env(data_dir: Path) -> dict[str, str]:
    """The test process's environment without its BHIV_* settings, on ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    return {**env, "BHIV_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}


def up_command(data_dir: Path, offset: int, *args: str) -> list[str]:
    """The command line of `bhiv up --port-offset offset --data-dir data_dir *args`."""
    return [
        sys.executable,
        "-m",
        "bhiv",
        "up",
        "--port-offset",
        str(offset),
        "--data-dir",
        str(data_dir),
        *args,
    ]


def launch(
    data_dir: Path, offset: int, log: IO[bytes], *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`bhiv up --port-offset offset --data-dir data_dir *args`, its output to ``log``."""
    return subprocess.Popen(
        up_command(data_dir, offset, *args),
        env={**up_env(data_dir), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def token(data_dir: Path, role: str) -> str:
    """A token from `bhiv token` on ``data_dir`` (the same local secret as its services)."""
    return (
        subprocess.run(
            [sys.executable, "-m", "bhiv", "token", "--role", role],
            env=up_env(data_dir),
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


@dataclass
class Up:
    """`bhiv up --port-offset` with some services, and an admin token for them."""

    offset: int
    auth: dict[str, str]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{catalog.get(service).port + self.offset}"


@contextmanager
def bhiv_up(tmp_path: Path, *services: str, env: dict[str, str] | None = None) -> Iterator[Up]:
    """Runs `bhiv up` for ``services`` (all of them when none is named) under a free port
    offset until they are ready; stops it with SIGTERM (exit 0 expected) when the block ends."""
    offset = free_offset()
    only = [arg for name in services for arg in ("--only", name)]
    log = (tmp_path / "up.log").open("wb")
    up = launch(tmp_path, offset, log, *only, env=env)
    try:
        for name in services or tuple(catalog.SERVICES):
            url = f"http://127.0.0.1:{catalog.get(name).port + offset}"
            wait_http(f"{url}/health/ready", timeout=90, alive=lambda: up.poll() is None)
        yield Up(offset, {"Authorization": f"Bearer {token(tmp_path, 'admin')}"})
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        # SIGTERM first: killing `bhiv up` outright would orphan its children.
        stop_process(up, 60)
        log.close()
