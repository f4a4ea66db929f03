"""Drive real load generators and parse what they print.

wrk finds the maximum throughput (as many requests as the server takes, from
a fixed number of connections); hey measures latency at a fixed request rate,
which is what a p99 target means ("p99 at half of the maximum load").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class Result:
    label: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int

    def figures(self) -> dict[str, float]:
        return {
            "requests_per_second": round(self.requests_per_second, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
        }

    def row(self) -> str:
        return (
            f"{self.label:<34} {self.requests_per_second:>10.0f} req/s   "
            f"p50 {self.p50_ms:>7.2f} ms   p99 {self.p99_ms:>7.2f} ms   errors {self.errors}"
        )


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise SystemExit(f"{tool} is not installed: run `make test-deps` (Debian package {tool})")
    return path


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def warm_up(urls: Iterable[str], token: str, requests: int = 200) -> str:
    """Warm every URL's connections and code paths; returns the wrk script sending ``token``."""
    for url in urls:
        for _ in range(requests):
            httpx.get(url, headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    return f'wrk.headers["Authorization"] = "Bearer {token}"\n'


def wrk(
    label: str, url: str, *, lua: str, seconds: int = 10, connections: int = 32, threads: int = 2
) -> Result:
    """Maximum throughput: ``lua`` is a wrk script setting method, headers, body, paths."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.lua"
        script.write_text(lua)
        out = subprocess.run(
            [
                require("wrk"),
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Result(label, rps, p50, p99, errors)


def hey(
    label: str,
    url: str,
    *,
    rate: float,
    seconds: int = 10,
    workers: int = 10,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> Result:
    """Latency at a fixed total ``rate`` (requests per second), spread over ``workers``."""
    cmd = [
        require("hey"),
        "-z",
        f"{seconds}s",
        "-c",
        str(workers),
        "-q",
        f"{rate / workers:.2f}",
        "-m",
        method,
    ]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if body is not None:
        cmd += ["-T", "application/json", "-d", body]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1)) * 1e3  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1)) * 1e3  # type: ignore[union-attr]
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    errors = sum(int(n) for code, n in codes.items() if not code.startswith("2"))
    return Result(label, rps, p50, p99, errors)
