"""Tracing's configuration: the standard OTEL_* variables, off unless an exporter is named.

``setup`` installs process-wide state (the global provider, patched client and
engine constructors), so each case that switches tracing on runs in its own
interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bhiv.core import tracing
from bhiv.core.tracing import TracingConfigError


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": " OTLP "}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
        # An endpoint alone does not switch tracing on: only a named exporter does.
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ],
)
def test_exporter(env: dict[str, str], expected: str | None) -> None:
    assert tracing.exporter_name(env) == expected


def test_unknown_exporter_names_the_variable() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracing.exporter_name({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_protocol() -> None:
    assert tracing.otlp_protocol({}) == "http/protobuf"
    assert tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    # The per-signal variable wins over the general one.
    assert (
        tracing.otlp_protocol(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            }
        )
        == "http/protobuf"
    )
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, None),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, None),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10%"}, "_ARG='10%'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "_ARG='1.5'"),
    ],
)
def test_sampler(env: dict[str, str], error: str | None) -> None:
    if error is None:
        tracing.check_sampler(env)
    else:
        with pytest.raises(TracingConfigError, match=error):
            tracing.check_sampler(env)


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_off_imports_neither_the_sdk_nor_exporters_nor_instrumentations() -> None:
    # (The API itself is imported by FastAPI, whose own telemetry stays idle
    # without a provider; redis-py, under purgatory, imports the SDK's metrics
    # whenever it is installed.)
    heavy = (
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter",
        "opentelemetry.instrumentation",
        "grpc",
    )
    code = (
        "import sys, json\n"
        "from bhiv.core.app import create_app\n"
        "from bhiv.logistics.service import SPEC\n"
        "from bhiv.core import tracing\n"
        "create_app(SPEC)\n"
        "with tracing.untraced():\n"
        "    pass\n"
        "print(json.dumps([tracing.enabled(), tracing.current_trace_id(),\n"
        f"  sorted(m for m in sys.modules if m.startswith({heavy!r}))]))\n"
    )
    assert json.loads(_run(code)) == [False, None, []]


def test_on_builds_the_provider_from_the_environment() -> None:
    code = (
        "import json\n"
        "from opentelemetry import trace\n"
        "from bhiv.core import tracing\n"
        "assert tracing.setup('logistics') and tracing.setup('logistics')\n"
        "p = trace.get_tracer_provider()\n"
        "exporter = p._active_span_processor._span_processors[0]._batch_processor._exporter\n"
        "with trace.get_tracer('t').start_as_current_span('s'):\n"
        "    tid = tracing.current_trace_id()\n"
        "print(json.dumps([p.resource.attributes['service.name'], p.sampler.get_description(),\n"
        "  type(exporter).__module__, len(tid), tracing.current_trace_id()]))\n"
    )
    out = _run(
        code,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.1",
        OTEL_BSP_EXPORT_TIMEOUT="100",
        OTEL_EXPORTER_OTLP_TIMEOUT="0.1",
    )
    name, sampler, module, tid_len, outside = json.loads(out)
    assert name == "logistics"
    assert "TraceIdRatioBased{0.1}" in sampler
    assert module == "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
    assert tid_len == 32 and outside is None


def test_service_name_and_console_exporter() -> None:
    code = (
        "from opentelemetry import trace\n"
        "from bhiv.core import tracing\n"
        "tracing.setup('logistics')\n"
        "p = trace.get_tracer_provider()\n"
        "e = p._active_span_processor._span_processors[0]._batch_processor._exporter\n"
        "print(p.resource.attributes['service.name'], type(e).__name__)\n"
    )
    out = _run(code, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="stock")
    assert out.split() == ["stock", "ConsoleSpanExporter"]
    code = (
        "from opentelemetry import trace\n"
        "from bhiv.core import tracing\n"
        "tracing.setup('crm')\n"
        "p = trace.get_tracer_provider()\n"
        "e = p._active_span_processor._span_processors[0]._batch_processor._exporter\n"
        "print(type(e).__module__)\n"
    )
    out = _run(code, OTEL_TRACES_EXPORTER="otlp")
    assert out.strip() == "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def test_bad_configuration_stops_serve_naming_the_variable(tmp_path: object) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BHIV_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bhiv", "serve", "logistics", "--port", "9"],
        env={
            **clean,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_TRACES_SAMPLER_ARG": "x",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "BHIV_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "OTEL_TRACES_SAMPLER_ARG='x'" in done.stderr


def test_background_work_is_untraced_except_its_own_spans() -> None:
    code = """
import asyncio, json
import sqlalchemy
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from bhiv.core import tracing
from bhiv.core.background import background

tracing.setup("logistics")
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
engine = sqlalchemy.create_engine("sqlite://")

def query():
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("select 1"))

async def work(stop):
    query()  # a poll: no span
    with tracing.span("outbox relay", {"bhiv.events": 1}):
        query()  # traced again, under the relay's span

async def main():
    async with background("w", work, grace=5):
        await asyncio.sleep(0.2)
    query()  # outside background work: traced

asyncio.run(main())
spans = memory.get_finished_spans()
relay = next(s for s in spans if s.name == "outbox relay")
print("RESULT", json.dumps([
    len(spans),
    sum(1 for s in spans if s.parent is not None and s.parent.span_id == relay.context.span_id),
    dict(relay.attributes),
]))
"""
    out = _run(code, OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="60000")
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    total, under_relay, attributes = json.loads(result.removeprefix("RESULT "))
    # connect + select under the relay, connect + select outside; none from the poll.
    assert (total, under_relay, attributes) == (5, 2, {"bhiv.events": 1})


def test_stored_traceparents_continue_and_link_traces() -> None:
    """What a workflow run or an outbox event stores (current_traceparent) makes a later
    span a child (parent=) or a link (links=, link()); what names no span is ignored."""
    code = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from bhiv.core import tracing

tracing.setup("agent-orchestration")
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
outside = tracing.current_traceparent()
with trace.get_tracer("t").start_as_current_span("request") as request:
    stored = tracing.current_traceparent()
with trace.get_tracer("t").start_as_current_span("other request"):
    other = tracing.current_traceparent()
bad = "00-" + "0" * 32 + "-" + "0" * 16 + "-01"
with tracing.span("step", parent=stored):
    pass
with tracing.span("relay", links=[stored, other, stored, None, bad, "garbage"]):
    pass
with tracing.span("orphan step", parent="garbage"):
    tracing.link(stored)
    tracing.link(None)
spans = {s.name: s for s in memory.get_finished_spans()}
ids = lambda c: [format(c.trace_id, "032x"), format(c.span_id, "016x")]
print("RESULT", json.dumps({
    "outside": outside,
    "stored": stored,
    "request": ids(spans["request"].context),
    "step parent": ids(spans["step"].parent),
    "step trace": format(spans["step"].context.trace_id, "032x"),
    "relay links": [ids(l.context) for l in spans["relay"].links],
    "other": ids(spans["other request"].context),
    "orphan parent": spans["orphan step"].parent is None,
    "orphan links": [ids(l.context) for l in spans["orphan step"].links],
}))
"""
    out = _run(code, OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="60000")
    result = json.loads(
        next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix(
            "RESULT "
        )
    )
    request, other = result["request"], result["other"]
    assert result["outside"] is None
    version, trace_id, span_id, flags = result["stored"].split("-")
    assert [version, trace_id, span_id] == ["00", *request] and int(flags, 16) & 1  # sampled
    assert result["step parent"] == request and result["step trace"] == request[0]
    # One link per request named, in order; what names no span is left out.
    assert result["relay links"] == [request, other]
    assert result["orphan parent"] is True and result["orphan links"] == [request]


def test_off_stores_no_traceparent() -> None:
    assert tracing.current_traceparent() is None
    with tracing.span("x", parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        tracing.link("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
