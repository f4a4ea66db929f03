"""Loopback helpers: free ports and waiting for a server to answer."""

from __future__ import annotations

import random
import socket
import time

import httpx

# Listening ports for test servers come from below the kernel's ephemeral range:
# a port the kernel hands out for bind(0) is free only until the server binds it,
# and meanwhile any outgoing connection (a kube client, httpx) may take it as its
# local port. That race failed the operator tier once ("address already in use" for
# its health port). Outgoing connections never use ports below the range.
LISTEN_PORTS_FROM = 20000


def ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range."""
    high = max(ephemeral_start(), LISTEN_PORTS_FROM + 1000)
    for _ in range(200):
        port = random.randrange(LISTEN_PORTS_FROM, high)  # noqa: S311 - not for security
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS_FROM}-{high - 1}")


def wait_http(url: str, *, timeout: float = 30.0, alive: object = None) -> None:
    """Poll ``url`` until it answers 200; ``alive()`` returning False aborts early."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise RuntimeError(f"server died before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last: {last!r})")
