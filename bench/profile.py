"""Where a request's CPU goes: py-spy samples of a service under wrk load.

    .venv/bin/python bench/profile.py read|write|proxy [--seconds 8] [--top 40] [--raw FILE]

Starts `bhiv serve logistics` on SQLite (and for ``proxy`` `bhiv serve gateway` in
front of it), seeds items, drives it with wrk (2 threads, 32 connections) and
records the serving process with ``py-spy --gil``: only the thread holding the
GIL is sampled, so the figures are the share of the interpreter's busy time spent
in (inclusive of callees) each function, threads waiting for a query or for the
GIL not counted. Prints the top functions of the framework, FastAPI/Starlette,
SQLAlchemy, pydantic, logging and uvicorn, and what fraction of the wall time
the GIL was held (CPU-bound near 100 %). The write-up is docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import require  # noqa: E402
from tests.support.servers import ServiceProcess, service_process  # noqa: E402

ITEMS = 200
RATE = 200  # py-spy samples per second
# Frames worth naming: ours and the libraries on the request path.
INTERESTING = re.compile(
    r"\((bhiv|fastapi|starlette|sqlalchemy|pydantic|logging|uvicorn|anyio|json|prometheus_client|httpx|httpcore)/"
)


def _seed(server: ServiceProcess, token: str) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as api:
        for n in range(ITEMS):
            api.post(
                "/inventory",
                json={"sku": f"P-{n}", "name": "x", "quantity": 10**6, "unit_cost": "1.00"},
            ).raise_for_status()


def _lua(target: str, token: str) -> str:
    lua = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    if target == "proxy":
        # The upstream's cheapest route, so the gateway, not Logistics, is the bottleneck.
        return (
            lua + 'request = function()\n  return wrk.format("GET", "/api/logistics/health")\nend\n'
        )
    prefix = ""
    if target == "write":
        return lua + (
            'wrk.headers["Content-Type"] = "application/json"\n'
            'local body = \'{"type": "receipt", "quantity": 1, "reference": "profile"}\'\n'
            f'request = function()\n  return wrk.format("POST", "{prefix}/inventory/" '
            f'.. math.random(1, {ITEMS}) .. "/movements", nil, body)\nend\n'
        )
    return lua + (
        f'request = function()\n  return wrk.format("GET", "{prefix}/inventory/" '
        f".. math.random(1, {ITEMS}))\nend\n"
    )


def _package(frames: list[str]) -> str:
    """The package of the innermost frame that is not the standard library's glue."""
    for frame in reversed(frames):
        found = re.search(r"\(([A-Za-z_][\w]*)[/.]", frame)
        if found and found.group(1) not in ("contextlib", "functools", "typing", "threading"):
            return found.group(1)
    return "?"


def summarise(raw: Path, seconds: float, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        seen = set()
        frames = stack.split(";")
        own[_package(frames)] += n
        leaf[re.sub(r":\d+\)$", ")", frames[-1])] += n
        for frame in frames:
            name = re.sub(r":\d+\)$", ")", frame)
            if name not in seen:
                seen.add(name)
                inclusive[name] += n
    busy = samples / (seconds * RATE)
    print(f"\nGIL held {busy:.0%} of the wall time ({samples} samples)")  # noqa: T201
    print("busy time by the package running (the innermost library frame):")  # noqa: T201
    for package, n in own.most_common(12):
        print(f"  {100 * n / samples:5.1f}%  {package}")  # noqa: T201
    print("busy time by the function running (its own code, callees in C included):")  # noqa: T201
    for name, n in leaf.most_common(12):
        print(f"  {100 * n / samples:5.1f}%  {name}")  # noqa: T201
    print("share of the busy time, inclusive of callees:")  # noqa: T201
    shown = 0
    for name, n in inclusive.most_common():
        if INTERESTING.search(name):
            print(f"  {100 * n / samples:5.1f}%  {name}")  # noqa: T201
            shown += 1
            if shown == top:
                break


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=("read", "write", "proxy"))
    parser.add_argument("--seconds", type=int, default=8, help="sampling time")
    parser.add_argument("--top", type=int, default=40, help="functions to print")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw (collapsed) stacks here")
    args = parser.parse_args()
    wrk = require("wrk")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "up").mkdir()
        (tmp / "gw").mkdir()
        upstream = service_process("logistics", tmp / "up").start()
        gateway = None
        try:
            token = upstream.token("editor")
            _seed(upstream, token)
            profiled, url = upstream, upstream.url
            if args.target == "proxy":
                gateway = service_process(
                    "gateway",
                    tmp / "gw",
                    BHIV_GATEWAY_UPSTREAMS=f'{{"logistics": ["{upstream.url}"]}}',
                ).start()
                profiled, url = gateway, gateway.url
            script = tmp / "load.lua"
            script.write_text(_lua(args.target, token))
            assert profiled.process is not None
            load = subprocess.Popen(
                [wrk, "-t2", "-c32", f"-d{args.seconds + 3}s", "-s", str(script), url],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)  # past wrk's connection set-up
            raw = args.raw or tmp / "stacks.txt"
            subprocess.run(
                [py_spy, "record", "--gil", "--nonblocking", "-f", "raw", "-r", str(RATE)]
                + ["-d", str(args.seconds), "-o", str(raw), "-p", str(profiled.process.pid)],
                check=True,
                capture_output=True,
            )
            out, _ = load.communicate()
            rps = next((ln for ln in out.splitlines() if ln.startswith("Requests/sec")), "")
            print(f"{args.target}: {rps.strip()} while sampled")  # noqa: T201
            summarise(raw, args.seconds, args.top)
        finally:
            if gateway is not None:
                gateway.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
