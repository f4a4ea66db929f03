"""The gateway's cost: one upstream called directly, through the gateway, and through nginx.

    .venv/bin/python bench/gateway.py [--seconds 10] [--path /health]

Starts `bhiv serve logistics` (the upstream, one uvicorn worker), `bhiv serve
gateway` routing /api/logistics to it (one worker, default settings: edge auth,
JSON access logs, health checks; no rate limits) and Debian's nginx as a
reverse proxy to the same upstream (one worker, keep-alive to the upstream,
access log on). Every request carries the same bearer token. Then:
  1. maximum throughput of each with wrk (2 threads, 32 connections);
  2. p50/p99 of each with hey at one fixed rate, half of the gateway's maximum,
     so all three are measured under the same load.
Prints the figures and the ratios. Targets for the record (not asserted):
gateway >= 0.8x nginx's throughput; gateway p99 at half load <= direct p99 + 3 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import Result, hey, warm_up, wrk  # noqa: E402
from bench.results import record  # noqa: E402
from tests.support.net import free_port, wait_http  # noqa: E402
from tests.support.servers import service_process  # noqa: E402

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream logistics {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /api/logistics/ {{
            proxy_pass http://logistics/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if not found:
        raise SystemExit("nginx is not installed: run `make test-deps` (Debian package nginx)")
    return found


def start_nginx(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = tmp / "nginx.conf"
    # As root, nginx's worker would drop to `nobody`, which cannot use our temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream_port=upstream_port, user=user))
    process = subprocess.Popen(
        [nginx_binary(), "-c", str(conf), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "nginx.out").open("wb"),
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/logistics/health", timeout=20, alive=lambda: process.poll() is None)
    return process, url


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants (nginx's worker is a child)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo.extend(children.get(current, []))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement")
    parser.add_argument(
        "--path", default="/health", help="upstream path to request (below the service)"
    )
    args = parser.parse_args()
    s = args.seconds

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for sub in ("up", "gw", "nginx"):
            (tmp / sub).mkdir()
        upstream = service_process("logistics", tmp / "up").start()
        gateway = nginx = None
        try:
            gateway = service_process(
                "gateway", tmp / "gw", BHIV_GATEWAY_UPSTREAMS=f'{{"logistics": ["{upstream.url}"]}}'
            ).start()
            nginx, nginx_url = start_nginx(tmp / "nginx", upstream.port)
            token = upstream.token("viewer")
            auth = {"Authorization": f"Bearer {token}"}
            targets = {
                "direct": f"{upstream.url}{args.path}",
                "nginx": f"{nginx_url}/api/logistics{args.path}",
                "gateway": f"{gateway.url}/api/logistics{args.path}",
            }
            lua = warm_up(targets.values(), token)
            assert upstream.process is not None and gateway.process is not None
            pids = {
                "upstream": upstream.process.pid,
                "nginx": nginx.pid,
                "gateway": gateway.process.pid,
            }
            peak, cpu = {}, {}
            for name, url in targets.items():
                before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                peak[name] = wrk(f"{name} (max, wrk)", url, lua=lua, seconds=s)
                done = peak[name].requests_per_second * s
                cpu[name] = {
                    k: (cpu_seconds(pid) - before[k]) / done * 1e6 for k, pid in pids.items()
                }
            rate = peak["gateway"].requests_per_second / 2
            half = {
                name: hey(
                    f"{name} (at {rate:.0f} req/s, hey)", url, rate=rate, seconds=s, headers=auth
                )
                for name, url in targets.items()
            }
        finally:
            if nginx is not None:
                nginx.send_signal(signal.SIGQUIT)
                nginx.wait(10)
            if gateway is not None:
                gateway.stop()
            upstream.stop()

    report(peak, half, cpu, s, args.path, rate)


def report(
    peak: dict[str, Result],
    half: dict[str, Result],
    cpu: dict[str, dict[str, float]],
    seconds: int,
    path: str,
    rate: float,
) -> None:
    cpus = os.cpu_count()
    print(
        f"\nGET {path} on `bhiv serve logistics`: direct, via nginx, via the gateway; one worker each, "
        f"{cpus} CPUs shared by all, {seconds}s per measurement\n"
    )
    print("maximum throughput (wrk, 2 threads, 32 connections):")
    for result in peak.values():
        print("  " + result.row())
    print("CPU per request during those runs (microseconds; upstream = the service itself):")
    for name, used in cpu.items():
        parts = ", ".join(
            f"{k} {used[k]:.0f}"
            for k in ("upstream", "nginx", "gateway")
            if k == "upstream" or k == name
        )
        print(f"  {name:<8} {parts}")
    print(
        f"latency at the same fixed rate, half of the gateway's maximum ({rate:.0f} req/s; hey, 10 workers):"
    )
    for result in half.values():
        print("  " + result.row())
    g, n, d = (
        peak["gateway"].requests_per_second,
        peak["nginx"].requests_per_second,
        peak["direct"].requests_per_second,
    )
    print("\nratios:")
    print(f"  gateway / nginx  throughput: {g / n:.2f}   (target >= 0.80)")
    print(f"  gateway / direct throughput: {g / d:.2f}")
    print(f"  nginx   / direct throughput: {n / d:.2f}")
    added_gw = half["gateway"].p99_ms - half["direct"].p99_ms
    added_nginx = half["nginx"].p99_ms - half["direct"].p99_ms
    print(
        f"  added p99 at half load: gateway {added_gw:+.2f} ms (target <= 3 ms), nginx {added_nginx:+.2f} ms"
    )
    record(
        "gateway",
        {
            "path": path,
            "seconds": seconds,
            "maximum": {name: r.figures() for name, r in peak.items() if name != "nginx"},
            "at_half_load": {name: r.figures() for name, r in half.items() if name != "nginx"},
            "cpu_us_per_request": {
                name: {k: round(v, 1) for k, v in used.items()} for name, used in cpu.items()
            },
            "gateway_to_nginx": round(g / n, 3),
            "gateway_to_direct": round(g / d, 3),
            "gateway_added_p99_ms": round(added_gw, 2),
            "nginx_added_p99_ms": round(added_nginx, 2),
        },
        baseline={"nginx": peak["nginx"].figures(), "nginx_at_half_load": half["nginx"].figures()},
    )


if __name__ == "__main__":
    main()
