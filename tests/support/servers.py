"""A BHIV service run the way users run it: ``python -m bhiv serve NAME`` in a
child process, talking real HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bhiv.core.auth import mint_token
from bhiv.core.settings import ServiceSettings
from tests.support.net import free_port, wait_http

TEST_JWT_SECRET = "test-only-secret-0123456789abcdef0123456789"


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM (a clean shutdown: a supervisor such as `bhiv up` stops its children
    too), then SIGKILL if ``process`` has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ServiceProcess:
    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        return self.launch().wait_ready()

    def launch(self) -> ServiceProcess:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bhiv", "serve", self.name, "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def wait_ready(self) -> ServiceProcess:
        assert self.process is not None, "launch() first"
        try:
            wait_http(
                f"{self.url}/health/ready", timeout=60, alive=lambda: self.process.poll() is None
            )
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.process:
            stop_process(self.process, 20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, role: str = "admin", subject: str = "tester", ttl: int = 600) -> str:
        settings = ServiceSettings(jwt_secret=TEST_JWT_SECRET, data_dir=self.data_dir)
        return mint_token(settings, subject=subject, roles=[role], ttl_seconds=ttl)

    def client(self, role: str | None = "admin", **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(role)}"} if role else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)  # type: ignore[arg-type]
        self._clients.append(c)
        return c


def service_process(
    name: str, tmp: Path, database_url: str | None = None, **extra_env: str
) -> ServiceProcess:
    data_dir = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    env.update(
        BHIV_DATA_DIR=str(data_dir),
        BHIV_JWT_SECRET=TEST_JWT_SECRET,
        BHIV_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        **extra_env,
    )
    if database_url:
        env["BHIV_DATABASE_URL"] = database_url
    return ServiceProcess(
        name=name, port=free_port(), data_dir=data_dir, env=env, log_path=tmp / f"{name}.log"
    )
