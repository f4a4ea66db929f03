"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or
``console``): then the process gets one SDK ``TracerProvider`` (its sampler
from ``OTEL_TRACES_SAMPLER``/``_ARG``, its ``service.name`` from
``OTEL_SERVICE_NAME``, else the service's catalog name), a batch exporter
(OTLP over ``http/protobuf`` or ``grpc`` per ``OTEL_EXPORTER_OTLP_PROTOCOL``,
its endpoint, headers and timeout read by the exporter itself), and the
library instrumentations for every hop a request makes: server spans
(FastAPI/ASGI, named by route template), httpx and aiohttp client spans and
SQLAlchemy spans, with W3C ``traceparent``/``tracestate`` propagation.

When tracing is off nothing is imported beyond this module: the SDK, the
exporters (gRPC above all) and the instrumentations cost start-up time and
memory that a service without an exporter should not pay.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import SpanContext

EXPORTERS = ("otlp", "console")
PROTOCOLS = ("http/protobuf", "grpc")
# The SDK's sampler names (opentelemetry.sdk.trace.sampling).
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable has a value tracing cannot use (named in the message)."""


def exporter_name(env: Mapping[str, str] | None = None) -> str | None:
    """The configured exporter, or None when tracing is off; bad values raise."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw in ("", "none"):
        return None
    if raw not in EXPORTERS:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={raw!r}: expected one of {', '.join(EXPORTERS)} or none"
        )
    return raw


def otlp_protocol(env: Mapping[str, str] | None = None) -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else HTTP."""
    env = os.environ if env is None else env
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if value := env.get(name, "").strip().lower():
            if value not in PROTOCOLS:
                raise TracingConfigError(
                    f"{name}={value!r}: expected one of {', '.join(PROTOCOLS)}"
                )
            return value
    return "http/protobuf"


def check_sampler(env: Mapping[str, str] | None = None) -> None:
    """Reject what the SDK would only warn about and silently replace by its default."""
    env = os.environ if env is None else env
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if name and name not in SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={name!r}: expected one of {', '.join(SAMPLERS)}"
        )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg and name.endswith("traceidratio"):
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio between 0 and 1"
            )


_lock = threading.Lock()
_enabled = False


def enabled() -> bool:
    return _enabled


def setup(service_name: str) -> bool:
    """Install the provider and the client/DB instrumentations once per process.

    Returns whether tracing is on. Call before any database engine or HTTP
    client is created: the instrumentations patch their constructors.
    """
    global _enabled
    exporter = exporter_name()
    if exporter is None:
        return False
    with _lock:
        if _enabled:
            return True
        protocol = otlp_protocol()
        check_sampler()

        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        span_exporter: SpanExporter
        if exporter == "console":
            span_exporter = ConsoleSpanExporter()
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            span_exporter = GrpcExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            span_exporter = HttpExporter()
        # OTEL_SERVICE_NAME wins; attributes passed to Resource.create would
        # override it, so the catalog name is only the fallback.
        name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
        # The sampler comes from OTEL_TRACES_SAMPLER/_ARG (the SDK reads them);
        # the provider flushes its batch at interpreter exit.
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(provider)
        # Header capture stays off (the instrumentations' default): no
        # Authorization or X-API-Key value ever becomes a span attribute.
        HTTPXClientInstrumentor().instrument()
        AioHttpClientInstrumentor().instrument()
        # Its declared range (sqlalchemy < 2.1) lags: it uses only the engine
        # events SQLAlchemy 2.1 keeps, and tests/service/test_tracing.py checks
        # that query spans arrive.
        SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
        _enabled = True
        return True


def instrument_app(app: FastAPI) -> None:
    """Server spans named by route template (``GET /orders/{order_id}``), when tracing is on."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # The liveness/readiness probes and the metrics scrape would be most spans.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/health(/ready)?$,/metrics$", exclude_spans=["receive", "send"]
    )


@contextmanager
def untraced() -> Iterator[None]:
    """No instrumentation spans inside (HTTP calls, queries): for background loops.

    A relay or worker polls its table every second or so; those polls are not
    requests, and as root spans they would outnumber everything else. What
    such a loop does that matters it wraps in :func:`span`.
    """
    if not _enabled:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def _remote(traceparent: str | None) -> SpanContext | None:
    """The span context a stored W3C ``traceparent`` names, or None when it names none."""
    if not traceparent:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    remote = trace.get_current_span(context).get_span_context()
    return remote if remote.is_valid else None


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, str | int] | None = None,
    *,
    parent: str | None = None,
    links: Iterable[str | None] = (),
) -> Iterator[None]:
    """An internal span around background work, its HTTP calls and queries traced again.

    ``parent``: the stored ``traceparent`` of the request the work belongs to (a
    workflow run's); the span continues that trace instead of the current one.
    ``links``: stored ``traceparent`` values of the requests that caused the work
    without waiting for it (a relayed event's); each valid one becomes a span link.
    """
    if not _enabled:
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.instrumentation import utils

    # Undo untraced() for this block only: these are the keys the
    # instrumentations check (utils.is_instrumentation_enabled); the SDK never does.
    ctx = context.get_current()
    for key in (
        utils._SUPPRESS_INSTRUMENTATION_KEY,
        utils._SUPPRESS_INSTRUMENTATION_KEY_PLAIN,
        utils._SUPPRESS_HTTP_INSTRUMENTATION_KEY,
    ):
        ctx = context.set_value(key, False, ctx)
    token = context.attach(ctx)
    remote = _remote(parent)
    parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote)) if remote else None
    # One link per distinct request, in order (a batch often holds several events of one).
    linked = {(c.trace_id, c.span_id): c for c in map(_remote, links) if c is not None}
    try:
        with trace.get_tracer("bhiv").start_as_current_span(
            name,
            context=parent_ctx,
            attributes=attributes,
            links=[trace.Link(c) for c in linked.values()],
        ):
            yield
    finally:
        context.detach(token)


def link(traceparent: str | None) -> None:
    """Link the current span to the request a stored ``traceparent`` names, if any.

    For work that learns what caused it only after its span started (a webhook
    delivery reads its event inside its span).
    """
    if not _enabled:
        return
    from opentelemetry import trace

    if (remote := _remote(traceparent)) is not None:
        trace.get_current_span().add_link(remote)


def current_traceparent() -> str | None:
    """The current span as a W3C ``traceparent``, or None when there is none.

    Stored with work that outlives the request (a workflow run, an outbox event),
    so what later does that work joins or links to the request's trace. Always
    W3C, whatever ``OTEL_PROPAGATORS`` says: it is read back by :func:`span`.
    """
    if not _enabled:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current span's trace ID (32 hex digits), or None when there is none."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None
