"""The OpenTelemetry Collector as the tests' trace receiver: a real process, the one
hack/k8s-tools builds (hack/otelcol/: the OTLP receiver, the file exporter).

The collector receives OTLP over HTTP and over gRPC, each on a free loopback port, and
writes every batch it
receives to a file as OTLP JSON, one ``TracesData`` object a line; the test reads
that file back into :class:`~tests.support.otlp.ReceivedSpan`, the in-process
receiver's shape, so the two answer the same questions.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port
from tests.support.otlp import ReceivedSpan, wait_for_spans
from tests.support.servers import stop_process

HACK_DIR = Path(__file__).resolve().parents[2] / "hack"


def collector_binary() -> Path:
    """The built collector; skips the test when hack/k8s-tools has not built it."""
    bin_dir = subprocess.run(
        [str(HACK_DIR / "k8s-tools"), "--print-bin-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    binary = Path(bin_dir) / "otelcol"
    if not binary.is_file():
        pytest.skip(f"otelcol is not in {bin_dir}; build it with `hack/k8s-tools`")
    return binary


def _value(value: dict[str, Any]) -> object:
    # OTLP JSON writes 64-bit integers as strings (the protobuf JSON mapping).
    if "intValue" in value:
        return int(value["intValue"])
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    return value


def _spans(traces: dict[str, Any]) -> Iterator[ReceivedSpan]:
    for resource_spans in traces.get("resourceSpans", []):
        resource = {
            a["key"]: _value(a["value"])
            for a in resource_spans.get("resource", {}).get("attributes", [])
        }
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                yield ReceivedSpan(
                    service=str(resource.get("service.name", "")),
                    name=span["name"],
                    kind=int(span.get("kind", 0)),
                    trace_id=span["traceId"],
                    span_id=span["spanId"],
                    parent_span_id=span.get("parentSpanId", ""),
                    attributes={a["key"]: _value(a["value"]) for a in span.get("attributes", [])},
                    links=tuple((ln["traceId"], ln["spanId"]) for ln in span.get("links", [])),
                )


@dataclass
class Collector:
    url: str  # the OTLP/HTTP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)
    grpc_url: str  # the OTLP/gRPC endpoint (with OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
    spans_file: Path
    log_path: Path

    def received(self) -> list[ReceivedSpan]:
        """Every span the collector has written out so far."""
        try:
            text = self.spans_file.read_text()
        except FileNotFoundError:
            return []
        # A line the collector is still writing has no newline yet.
        lines = text.split("\n")[:-1]
        return [span for line in lines if line for span in _spans(json.loads(line))]

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30
    ) -> list[ReceivedSpan]:
        return wait_for_spans(self.received, predicate, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _config(port: int, grpc_port: int, spans_file: Path) -> dict[str, Any]:
    protocols = {
        "http": {"endpoint": f"127.0.0.1:{port}"},
        "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
    }
    return {
        "receivers": {"otlp": {"protocols": protocols}},
        # Flushed often: the test polls the file.
        "exporters": {"file": {"path": str(spans_file), "flush_interval": "100ms"}},
        "service": {
            # The collector's own metrics would listen on :8888, shared by every collector.
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
        },
    }


@contextmanager
def otel_collector(work: Path) -> Iterator[Collector]:
    """Runs the collector until the block ends; ready once it accepts an export."""
    binary = collector_binary()
    port = grpc_port = free_port()
    while grpc_port == port:
        grpc_port = free_port()
    config = work / "otelcol.yaml"
    # JSON is YAML: the collector's file provider reads it as such.
    config.write_text(json.dumps(_config(port, grpc_port, work / "spans.jsonl"), indent=2))
    collector = Collector(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{grpc_port}",
        work / "spans.jsonl",
        work / "otelcol.log",
    )
    with collector.log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), f"--config=file:{config}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_accepting(collector, process)
        yield collector
    finally:
        stop_process(process, 20)


def _wait_accepting(collector: Collector, process: subprocess.Popen[bytes]) -> None:
    # An empty ExportTraceServiceRequest is a valid export of no spans: 200 once the
    # receiver and its pipeline are up.
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"otelcol exited with {process.returncode}:\n{collector.log()}")
        try:
            r = httpx.post(
                f"{collector.url}/v1/traces",
                content=b"",
                headers={"Content-Type": "application/x-protobuf"},
                timeout=2,
            )
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"otelcol did not accept exports within 30 s:\n{collector.log()}")
        time.sleep(0.1)
