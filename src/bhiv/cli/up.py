"""``bhiv up``: every service as a child process, in startup order.

Every child is launched at once, so their imports (about a second each) overlap; each
one, once its app is built, waits to serve until every service of the earlier stages
answers ``/health/ready`` (``bhiv serve --after``), so the startup order holds.
Children's output is prefixed with their name; they log JSON, which is shown as short
human lines on a terminal (BHIV_LOG_FORMAT=auto, the default, or text) and passed
through as it is otherwise (or with BHIV_LOG_FORMAT=json). Ctrl-C or SIGTERM stops them
all (SIGTERM, then SIGKILL after a grace period); so does any child dying unexpectedly,
since a half-running platform misleads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bhiv import catalog
from bhiv.core.log_lines import render
from bhiv.core.private_files import private_dir
from bhiv.core.settings import LogFormat, default_data_dir, load_or_create_local_secret

READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 15.0
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")

console = Console(stderr=True, highlight=False)


@dataclass
class Child:
    entry: catalog.ServiceEntry
    port: int
    process: subprocess.Popen[bytes]
    colour: str
    readable: bool  # show its JSON log lines as human lines

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _readable(line: str) -> Text:
    """A child's JSON log record as a human line; any other output as it is."""
    try:
        fields = json.loads(line)
    except ValueError:
        fields = None
    if isinstance(fields, dict) and "level" in fields:
        return render(fields, service=False)
    return Text(line)


def _pump(child: Child) -> None:
    """Copy a child's output to ours, each line prefixed with its service name."""
    assert child.process.stdout is not None
    prefix = Text(f"{child.entry.name:>13} | ", style=child.colour)
    for raw in child.process.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        console.print(prefix + (_readable(line) if child.readable else Text(line)), soft_wrap=True)


def _answers_ready(http: httpx.Client, url: str) -> bool:
    """Does the service at base ``url`` answer /health/ready with 200 (not yet: False)?"""
    try:
        return http.get(f"{url}/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def wait_until_ready(urls: list[str], timeout: float) -> str | None:
    """Poll each base URL's /health/ready until it answers 200; the first URL still not
    ready when ``timeout`` seconds have passed, else None."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    with httpx.Client(timeout=2.0) as http:
        while pending:
            if _answers_ready(http, pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                return pending[0]
            time.sleep(0.05)
    return None


def _start(
    entry: catalog.ServiceEntry,
    port: int,
    env: dict[str, str],
    colour: str,
    readable: bool,
    after: list[str],
) -> Child:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bhiv",
            "serve",
            entry.name,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            *(arg for url in after for arg in ("--after", url)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    child = Child(entry, port, process, colour, readable)
    threading.Thread(target=_pump, args=(child,), daemon=True).start()
    return child


def _wait_ready(children: list[Child], stop: threading.Event) -> Child | None:
    """Wait until every child answers /health/ready; returns the first that failed."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    pending = list(children)
    with httpx.Client(timeout=2.0) as http:
        while pending:
            for child in list(pending):
                if child.process.poll() is not None:
                    return child
                if _answers_ready(http, child.url):
                    pending.remove(child)
            if pending:
                if time.monotonic() > deadline:
                    return pending[0]
                if stop.wait(0.2):
                    return None
    return None


def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{child.entry.name} did not stop in time; killing it[/]")
            child.process.kill()
            child.process.wait()


def run_platform(
    *, data_dir: Path | None, port_offset: int = 0, only: list[str] | None = None
) -> int:
    data_dir = (
        (data_dir or Path(os.environ.get("BHIV_DATA_DIR") or default_data_dir()))
        .expanduser()
        .resolve()
    )
    stages = catalog.in_startup_order()
    if only:
        unknown = sorted(set(only) - set(catalog.SERVICES))
        if unknown:
            console.print(f"[red]error:[/] unknown service(s): {', '.join(unknown)}")
            return 2
        stages = [[e for e in stage if e.name in only] for stage in stages]
        stages = [s for s in stages if s]

    planned = [(e, e.port + port_offset) for stage in stages for e in stage]
    for entry, port in planned:
        if port_in_use(port):
            console.print(
                f"[red]error:[/] port {port} for {entry.name} is already in use on 127.0.0.1. "
                "Stop whatever holds it, or pass --port-offset."
            )
            return 1

    private_dir(data_dir)  # every service's database and the local secrets live here
    env = dict(os.environ, BHIV_DATA_DIR=str(data_dir), BHIV_HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    env.pop("BHIV_PORT", None)  # each child gets its own port
    # The children log JSON to this process, which shows it as human lines on a terminal.
    log_format = env.get("BHIV_LOG_FORMAT", "auto").strip().lower()
    choices = get_args(LogFormat)
    if log_format not in choices:
        console.print(
            f"[red]error:[/] BHIV_LOG_FORMAT={log_format!r}: "
            f"use {', '.join(choices[:-1])} or {choices[-1]}",
            soft_wrap=True,
        )
        return 2
    readable = log_format == "text" or (log_format == "auto" and console.is_terminal)
    env["BHIV_LOG_FORMAT"] = "json"
    # One process per service, all on this data directory: secrets made there are
    # shared by construction, even where KUBERNETES_SERVICE_HOST is set (a dev pod).
    env.setdefault("BHIV_REQUIRE_SHARED_SECRETS", "false")
    # Every child learns where every service started here runs (BHIV_INTEGRATIONS_URL
    # for outbox relays, BHIV_LOGISTICS_URL and BHIV_CRM_URL for sync jobs, ...): the
    # settings' defaults are the catalog ports, wrong under --port-offset. A URL
    # the caller exported wins, as for the gateway's upstreams below.
    for entry, port in planned:
        env.setdefault(catalog.url_variable(entry.name), f"http://127.0.0.1:{port}")
    # The gateway routes to exactly the services started here, at their ports.
    env.setdefault(
        "BHIV_GATEWAY_UPSTREAMS",
        json.dumps(
            {e.name: [f"http://127.0.0.1:{port}"] for e, port in planned if e.name != "gateway"}
        ),
    )
    if not env.get("BHIV_JWT_SECRET") and not env.get("BHIV_JWT_PUBLIC_KEY"):
        # Created before any child starts so every service shares one secret.
        load_or_create_local_secret(data_dir / "jwt-secret")

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    try:
        console.print(f"[bold]BHIV Core[/] data in {data_dir}")
        by_stage: list[list[Child]] = []
        earlier: list[str] = []
        for stage in stages:
            started = [
                _start(
                    e,
                    e.port + port_offset,
                    env,
                    COLOURS[(len(children) + i) % len(COLOURS)],
                    readable,
                    after=list(earlier),
                )
                for i, e in enumerate(stage)
            ]
            children.extend(started)
            by_stage.append(started)
            earlier += [child.url for child in started]
        for number, started in enumerate(by_stage, 1):
            failed = _wait_ready(started, stop)
            if stop.is_set():
                return 0
            if failed is not None:
                code = failed.process.poll()
                why = (
                    f"exited with code {code}"
                    if code is not None
                    else "did not become ready in time"
                )
                console.print(f"[red]error:[/] {failed.entry.name} {why}; stopping everything")
                return 1
            names = ", ".join(child.entry.name for child in started)
            console.print(f"[bold]stage {number}[/] ready: {names}")

        table = Table(title="BHIV Core is up", title_justify="left")
        # Three columns fit an 80-column log without truncating a URL.
        for column in ("service", "url", "gateway prefix"):
            table.add_column(column, no_wrap=True)
        for child in children:
            table.add_row(child.entry.name, child.url, child.entry.prefix or "—")
        console.print(table)
        console.print(
            "API docs: <url>/docs   Get a token: [bold]bhiv token --role admin[/]   Stop: Ctrl-C"
        )
        gateway = next((c for c in children if c.entry.name == "gateway"), None)
        if gateway is not None:
            console.print(f"Web console: {gateway.url}/console", soft_wrap=True)

        while not stop.wait(0.5):
            for child in children:
                if child.process.poll() is not None:
                    console.print(
                        f"[red]error:[/] {child.entry.name} exited with code {child.process.returncode}; "
                        "stopping everything"
                    )
                    return 1
        return 0
    finally:
        if children:
            console.print("stopping all services")
            _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
