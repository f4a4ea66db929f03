"""Logistics read and write throughput, and latency at half load, on SQLite with one worker.

    .venv/bin/python bench/logistics_throughput.py [--seconds 10]

Starts `bhiv serve logistics` (one uvicorn process, SQLite, default settings
including JSON access logs), seeds items, then:
  1. maximum throughput with wrk (32 connections) for: GET /health (the
     framework's floor, the baseline), GET /inventory/{id} (reads), and
     POST /inventory/{id}/movements (ledger writes);
  2. p50/p99 with hey at half of each measured maximum rate.
Prints figures and ratios against the baseline measured in the same run.
Targets for the record (not asserted): reads >= 1,500 req/s, writes >= 400 req/s,
p99 < 25 ms at half load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import hey, wrk  # noqa: E402
from bench.results import record  # noqa: E402
from tests.support.servers import service_process  # noqa: E402

ITEMS = 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = service_process("logistics", Path(tmp)).start()
        try:
            token = server.token("editor")
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as api:
                for n in range(ITEMS):
                    r = api.post(
                        "/inventory",
                        json={
                            "sku": f"B-{n}",
                            "name": f"Item {n}",
                            "quantity": 1000,
                            "unit_cost": "1.00",
                        },
                    )
                    r.raise_for_status()
            header_lua = f'wrk.headers["Authorization"] = "Bearer {token}"\n'
            lua_read = header_lua + (
                f'request = function()\n  return wrk.format("GET", "/inventory/" .. math.random(1, {ITEMS}))\nend\n'
            )
            lua_write = header_lua + (
                'wrk.headers["Content-Type"] = "application/json"\n'
                'local body = \'{"type": "receipt", "quantity": 1, "reference": "bench"}\'\n'
                "request = function()\n"
                f'  local path = "/inventory/" .. math.random(1, {ITEMS}) .. "/movements"\n'
                '  return wrk.format("POST", path, nil, body)\nend\n'
            )
            s = args.seconds
            baseline = wrk("GET /health (baseline)", f"{server.url}/health", lua="", seconds=s)
            reads = wrk("GET /inventory/{id}", server.url, lua=lua_read, seconds=s)
            writes = wrk("POST /inventory/{id}/movements", server.url, lua=lua_write, seconds=s)
            half_reads = hey(
                "reads at half load",
                f"{server.url}/inventory/1",
                rate=reads.requests_per_second / 2,
                seconds=s,
                headers=auth,
            )
            half_writes = hey(
                "writes at half load",
                f"{server.url}/inventory/2/movements",
                rate=writes.requests_per_second / 2,
                seconds=s,
                method="POST",
                headers=auth,
                body=json.dumps({"type": "receipt", "quantity": 1}),
            )
        finally:
            server.stop()

    print(f"\nLogistics on SQLite, one worker, {s}s per measurement, {ITEMS} items\n")
    print("maximum throughput (wrk, 2 threads, 32 connections):")
    for result in (baseline, reads, writes):
        print("  " + result.row())
    print("latency at half of the maximum (hey, fixed rate):")
    for result in (half_reads, half_writes):
        print("  " + result.row())
    print("\nratios against the baseline (GET /health) in this run:")
    print(
        f"  reads  / baseline throughput: {reads.requests_per_second / baseline.requests_per_second:.2f}"
    )
    print(
        f"  writes / baseline throughput: {writes.requests_per_second / baseline.requests_per_second:.2f}"
    )
    print(
        "\ntargets (for the record): reads >= 1500 req/s, writes >= 400 req/s, p99 < 25 ms at half load"
    )
    print(
        f"  reads {reads.requests_per_second:.0f} req/s, writes {writes.requests_per_second:.0f} req/s, "
        f"p99 at half load: reads {half_reads.p99_ms:.1f} ms, writes {half_writes.p99_ms:.1f} ms"
    )
    record(
        "logistics",
        {
            "seconds": s,
            "reads": reads.figures(),
            "writes": writes.figures(),
            "reads_at_half_load": half_reads.figures(),
            "writes_at_half_load": half_writes.figures(),
            "reads_to_baseline": round(reads.requests_per_second / baseline.requests_per_second, 3),
            "writes_to_baseline": round(
                writes.requests_per_second / baseline.requests_per_second, 3
            ),
        },
        baseline={"health": baseline.figures()},
    )


if __name__ == "__main__":
    main()
