"""Tracing's overhead: Logistics directly and through the gateway, tracing off and on.

    .venv/bin/python bench/tracing.py [--seconds 5]

In one run, for each mode (off; on, sampling 100 %; on, sampling 10 %,
``parentbased_traceidratio``) it starts `bhiv serve logistics` and `bhiv serve
gateway` (one worker each) with only the ``OTEL_*`` variables differing,
exporting over OTLP/HTTP to a receiver in this process (tests/support/otlp.py,
which decodes every batch as a collector would), creates one item, then
measures maximum throughput and latency with wrk (2 threads, 32 connections)
of ``GET /inventory/1`` directly and of ``GET /api/logistics/inventory/1``
through the gateway: a server span, a gateway client span and the database
spans per request. Prints the figures and the ratios to "off"; never
passes or fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import Result, warm_up, wrk  # noqa: E402
from tests.support.otlp import otlp_receiver  # noqa: E402
from tests.support.servers import service_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="duration of each measurement")
    args = parser.parse_args()

    results: dict[str, dict[str, Result]] = {}
    with otlp_receiver() as receiver, tempfile.TemporaryDirectory() as tmp_name:
        on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        modes = {
            "off": {},
            "on, 100 %": {**on, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
            "on, 10 %": {
                **on,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
        }
        for n, (mode, env) in enumerate(modes.items()):
            tmp = Path(tmp_name) / str(n)
            for sub in ("up", "gw"):
                (tmp / sub).mkdir(parents=True)
            upstream = service_process("logistics", tmp / "up", **env).start()
            gateway = None
            try:
                gateway = service_process(
                    "gateway",
                    tmp / "gw",
                    BHIV_GATEWAY_UPSTREAMS=f'{{"logistics": ["{upstream.url}"]}}',
                    **env,
                ).start()
                token = upstream.token("admin")
                auth = {"Authorization": f"Bearer {token}"}
                httpx.post(
                    f"{upstream.url}/inventory",
                    json={"sku": "BENCH-1", "name": "Bench", "quantity": 1},
                    headers=auth,
                ).raise_for_status()
                targets = {
                    "direct": f"{upstream.url}/inventory/1",
                    "gateway": f"{gateway.url}/api/logistics/inventory/1",
                }
                lua = warm_up(targets.values(), token)
                results[mode] = {
                    name: wrk(f"{name}, tracing {mode}", url, lua=lua, seconds=args.seconds)
                    for name, url in targets.items()
                }
            finally:
                if gateway is not None:
                    gateway.stop()
                upstream.stop()
        spans = len(receiver.spans)

    print(f"\nGET /inventory/1, {args.seconds} s each (wrk -t2 -c32); {spans} spans received\n")
    for mode in modes:
        for result in results[mode].values():
            print(result.row())
    print()
    for name in ("direct", "gateway"):
        off = results["off"][name]
        for mode in list(modes)[1:]:
            r = results[mode][name]
            print(
                f"{name:<8} tracing {mode:<10} throughput {r.requests_per_second / off.requests_per_second:5.2f}x off"
                f"   p50 {r.p50_ms - off.p50_ms:+6.2f} ms   p99 {r.p99_ms - off.p99_ms:+6.2f} ms"
            )


if __name__ == "__main__":
    main()
