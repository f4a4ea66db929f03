"""Start-up and idle memory: `bhiv up` to every service ready, each service's import
time, and each process's resident memory once idle.

    .venv/bin/python bench/startup.py [--runs 3]

For each run, `bhiv up` on a fresh data directory (SQLite, a free port range) is timed
from launch until every service answers /health/ready; the median is printed beside
the interpreter's own start (`python -c pass`, the floor, measured in the same run) as
a ratio. Each service's app module is imported in a fresh interpreter (median of the
runs). Two seconds after the last run is ready, every child's VmRSS is read.
Targets for the record (not asserted): `bhiv up` under 4 s, idle RSS at most 75 MB.

Where a service's memory goes: a fresh interpreter imports what a Logistics process
imports, layer by layer (the libraries in the order the service needs them, then BHIV's
framework and the service), and prints VmRSS after each; what the idle process holds
beyond the last layer is its app, its OpenAPI document, migrations run and serving.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import record  # noqa: E402
from bhiv import catalog  # noqa: E402
from tests.service.test_cli_up import _children  # noqa: E402
from tests.support.up import free_offset  # noqa: E402


def _interpreter_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def _import_time(entry: catalog.ServiceEntry) -> float:
    module = entry.app_factory.partition(":")[0]
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


# Cumulative: each layer's figure is what importing it adds to everything above it.
MEMORY_LAYERS = (
    ("pydantic, pydantic-settings", "pydantic, pydantic_settings"),
    ("FastAPI, Starlette", "fastapi"),
    ("SQLAlchemy ORM", "sqlalchemy.orm"),
    ("Alembic (migrations)", "alembic.command, alembic.runtime.migration"),
    ("uvicorn, uvloop, httptools", "uvicorn, uvloop, httptools"),
    ("httpx", "httpx"),
    ("purgatory (breakers; imports redis)", "purgatory"),
    ("PyJWT, cryptography", "jwt, cryptography.hazmat.primitives.kdf.hkdf"),
    (
        "OpenTelemetry API (the SDK only when tracing is on)",
        "opentelemetry.trace, opentelemetry.propagate",
    ),
    ("prometheus-client", "prometheus_client"),
    ("bhiv.core (the framework)", "bhiv.core.app"),
    ("bhiv.logistics", "bhiv.logistics.service"),
)
_LAYERS_SCRIPT = """
import gc, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
figures = [('python', rss())]
for name, modules in json.loads(sys.argv[1]):
    exec('import ' + modules)
    gc.collect()
    figures.append((name, rss()))
print(json.dumps(figures))
"""


def _memory_layers() -> list[tuple[str, float]]:
    """(layer, RSS in MB once imported), cumulative, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _LAYERS_SCRIPT, json.dumps(MEMORY_LAYERS)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [(name, float(mb)) for name, mb in json.loads(out.stdout)]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _up_once(keep: bool) -> tuple[float, dict[str, float]]:
    """Seconds from launching `bhiv up` to every service ready; with ``keep``, each
    service's RSS (MB) two seconds later."""
    offset = free_offset()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
        started = time.perf_counter()
        log = Path(data) / "up.log"
        up = subprocess.Popen(
            [sys.executable, "-m", "bhiv", "up", "--port-offset", str(offset), "--data-dir", data],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            pending = {e.name: e.port + offset for e in catalog.SERVICES.values()}
            with httpx.Client(timeout=1.0) as http:
                while pending:
                    if up.poll() is not None:
                        tail = "\n".join(
                            line for line in log.read_text().splitlines() if '"INFO"' not in line
                        )[-3000:]
                        raise RuntimeError(f"bhiv up exited with {up.returncode}:\n{tail}")
                    for name, port in list(pending.items()):
                        try:
                            if http.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                                del pending[name]
                        except httpx.TransportError:
                            pass
                    time.sleep(0.02)
            took = time.perf_counter() - started
            rss: dict[str, float] = {}
            if keep:
                time.sleep(2)
                for pid in _children(up.pid):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    service = cmdline[cmdline.index(b"serve") + 1].decode()
                    rss[service] = _rss_mb(pid)
            return took, rss
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="bhiv up runs (median reported)")
    args = parser.parse_args()

    floor = statistics.median(_interpreter_start() for _ in range(args.runs))
    imports = {
        e.name: statistics.median(_import_time(e) for _ in range(args.runs))
        for e in catalog.SERVICES.values()
    }
    runs = [_up_once(keep=i == args.runs - 1) for i in range(args.runs)]
    up_seconds = statistics.median(t for t, _ in runs)
    rss = runs[-1][1]

    print(f"machine: {os.cpu_count()} cores; python -c pass: {floor * 1000:.0f} ms")  # noqa: T201
    print(  # noqa: T201
        f"bhiv up to every service ready: {up_seconds:.2f} s median of {args.runs} "
        f"({', '.join(f'{t:.2f}' for t, _ in runs)}) = {up_seconds / floor:.0f}x python -c pass"
    )
    print(f"{'service':<22}{'import (s)':>12}{'idle RSS (MB)':>16}")  # noqa: T201
    for name in catalog.SERVICES:
        print(f"{name:<22}{imports[name]:>12.2f}{rss.get(name, float('nan')):>16.0f}")  # noqa: T201
    layers = _memory_layers()
    print("where Logistics' memory goes (RSS after importing each layer, MB):")  # noqa: T201
    previous = 0.0
    for name, mb in layers:
        print(f"  {name:<44}{mb:>7.1f}  +{mb - previous:5.1f}")  # noqa: T201
        previous = mb
    idle = rss.get("logistics", float("nan"))
    print(f"  {'app built, migrated, serving (idle)':<44}{idle:>7.1f}  +{idle - previous:5.1f}")  # noqa: T201
    record(
        "startup",
        {
            "up_seconds": round(up_seconds, 3),
            "up_runs_seconds": [round(t, 3) for t, _ in runs],
            "up_to_python_start": round(up_seconds / floor, 1),
            "import_seconds": {k: round(v, 3) for k, v in imports.items()},
            "idle_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "logistics_rss_by_layer_mb": {name: round(mb, 1) for name, mb in layers},
        },
        baseline={"python_start_seconds": round(floor, 4)},
    )


if __name__ == "__main__":
    main()
