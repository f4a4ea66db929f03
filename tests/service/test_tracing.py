"""One request through the gateway to Logistics, traced: real processes, real OTLP/HTTP.

The gateway and Logistics run as ``bhiv serve`` children with only the
standard ``OTEL_*`` variables set; a receiver in the test decodes what their
exporters send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.gateway.conftest import start_gateway
from tests.service.integrations.conftest import FAST
from tests.service.integrations.helpers import created, new_subscription
from tests.service.integrations.peers import receiver as hook_receiver
from tests.support.otelcol import otel_collector
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.servers import ServiceProcess, service_process

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Receiver, ServiceProcess, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("tracing")
    with otlp_receiver() as receiver:
        otel = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        for sub in ("logistics", "gw"):
            (tmp / sub).mkdir()
        logistics = service_process("logistics", tmp / "logistics", **otel).start()
        gw = start_gateway(tmp / "gw", {"logistics": [logistics.url]}, **otel)
        try:
            yield receiver, gw, logistics
        finally:
            gw.stop()
            logistics.stop()


def _one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def test_one_request_is_one_trace_gateway_to_database(
    traced: tuple[Receiver, ServiceProcess, ServiceProcess],
) -> None:
    receiver, gw, logistics = traced
    with gw.client("editor") as api:
        created = api.post(
            "/api/logistics/inventory", json={"sku": "TR-1", "name": "Traced", "quantity": 1}
        )
        assert created.status_code == 201, created.text
        item = created.json()["id"]
        # The caller's own trace is continued (W3C traceparent), not replaced.
        r = api.get(
            f"/api/logistics/inventory/{item}",
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
        assert r.status_code == 200, r.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Every span asserted on below: a process exports a span when it ends, in
        # batches, so the queries may arrive before their server span, and Logistics'
        # spans before the gateway's (whose edge span ends last).
        kinds = {(s.service, s.kind) for s in spans if s.trace_id == CALLER_TRACE}
        wanted = {("gateway", SERVER), ("gateway", CLIENT), ("logistics", SERVER)}
        return wanted | {("logistics", CLIENT)} <= kinds

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == CALLER_TRACE]
    edge = _one(spans, service="gateway", kind=SERVER)
    assert edge.name == "GET /api/{path}"
    assert edge.parent_span_id == CALLER_SPAN
    upstream_call = _one(spans, service="gateway", kind=CLIENT)
    assert upstream_call.parent_span_id == edge.span_id
    server = _one(spans, service="logistics", kind=SERVER)
    # The route template, never the raw path with the item's ID.
    assert server.name == "GET /inventory/{item_id}"
    assert server.parent_span_id == upstream_call.span_id
    queries = [s for s in spans if s.service == "logistics" and s.kind == CLIENT]
    assert queries and all(q.parent_span_id == server.span_id for q in queries)
    assert all("db.system" in q.attributes or "db.system.name" in q.attributes for q in queries)
    # Credentials never become span attributes (header capture stays off).
    for span in spans:
        assert not any("authorization" in k.lower() for k in span.attributes), span

    lines = [json.loads(line) for line in logistics.log().splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == CALLER_TRACE for line in lines)


def test_spans_reach_a_real_collector_over_grpc(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the same spans, over OTLP/gRPC, to the
    OpenTelemetry Collector's gRPC receiver (the one most deployments run)."""
    (tmp_path / "otelcol").mkdir()
    with otel_collector(tmp_path / "otelcol") as collector:
        logistics = service_process(
            "logistics",
            tmp_path,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_url,
            OTEL_BSP_SCHEDULE_DELAY="100",
        ).start()
        try:
            with logistics.client("viewer") as api:
                r = api.get(
                    "/inventory/424242",
                    headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
                )
            assert r.status_code == 404, r.text
            spans = collector.wait_for(
                lambda spans: any(s.trace_id == CALLER_TRACE and s.kind == SERVER for s in spans)
            )
        finally:
            logistics.stop()
    server = _one([s for s in spans if s.trace_id == CALLER_TRACE], kind=SERVER)
    assert (server.service, server.name) == ("logistics", "GET /inventory/{item_id}")
    assert server.parent_span_id == CALLER_SPAN


def test_problem_bodies_carry_the_trace_id(
    traced: tuple[Receiver, ServiceProcess, ServiceProcess],
) -> None:
    receiver, gw, logistics = traced
    with gw.client("viewer") as api:
        r = api.get("/api/logistics/inventory/987654")
    assert r.status_code == 404
    problem = r.json()
    assert problem["request_id"] and len(problem["trace_id"]) == 32
    # Logistics' server span itself: its queries' spans may be exported before it ends.
    spans = receiver.wait_for(
        lambda spans: any(
            s.trace_id == problem["trace_id"] and s.service == "logistics" and s.kind == SERVER
            for s in spans
        )
    )
    assert (
        _one(
            [s for s in spans if s.trace_id == problem["trace_id"]],
            service="logistics",
            kind=SERVER,
        ).name
        == "GET /inventory/{item_id}"
    )


def test_outbox_relay_and_webhook_delivery_are_traced(
    tmp_path: Path, traced: tuple[Receiver, ServiceProcess, ServiceProcess]
) -> None:
    """An event from Logistics' outbox to a subscriber: the relay batch, its call
    to the integrations service, and the delivery whose webhook carries its traceparent;
    the relay and the delivery both link to the request that published the event."""
    receiver = traced[0]
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    for sub in ("int", "log"):
        (tmp_path / sub).mkdir()
    with hook_receiver() as hooks:
        integrations = service_process("integrations", tmp_path / "int", **FAST, **otel).start()
        logistics = service_process(
            "logistics",
            tmp_path / "log",
            BHIV_INTEGRATIONS_URL=integrations.url,
            BHIV_OUTBOX_RELAY_INTERVAL="0.2",
            **otel,
        ).start()
        try:
            new_subscription(integrations.client(), hooks.url + "/low", ["inventory.low_stock"])
            api = logistics.client()
            item = created(
                api.post(
                    "/inventory",
                    json={"sku": "TR-2", "name": "Traced", "quantity": 10, "reorder_level": 4},
                )
            )
            moved = api.post(
                f"/inventory/{item['id']}/movements",
                json={"type": "reservation", "quantity": 7, "reference": "SO-1"},
            )
            assert moved.status_code == 201, moved.text
            (webhook,) = hooks.wait_for("/low", 1)
        finally:
            logistics.stop()
            integrations.stop()

    version, trace_id, parent, flags = webhook.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Every span asserted on below (each process exports its spans as they end).
        names = {(s.service, s.name) for s in spans}
        return (
            any(s.span_id == parent for s in spans)
            and {
                ("integrations", "webhook delivery"),
                ("logistics", "outbox relay"),
                ("logistics", "POST"),
                ("logistics", "POST /inventory/{item_id}/movements"),
                ("integrations", "POST /events"),
            }
            <= names
        )

    spans = receiver.wait_for(complete)
    call = _one(spans, span_id=parent)
    delivery = _one(spans, span_id=call.parent_span_id)
    assert (call.service, call.kind) == ("integrations", CLIENT)
    assert (delivery.service, delivery.name) == ("integrations", "webhook delivery")

    relay = [s for s in spans if s.service == "logistics" and s.name == "outbox relay"]
    assert relay
    relayed = [s for s in spans if s.trace_id == relay[0].trace_id]
    post = _one(relayed, service="logistics", name="POST", parent_span_id=relay[0].span_id)
    accepted = _one(relayed, service="integrations", kind=SERVER)
    assert accepted.name == "POST /events" and accepted.parent_span_id == post.span_id

    # The reservation's request published the event: a trace of its own, linked to by both.
    cause = _one(spans, service="logistics", name="POST /inventory/{item_id}/movements")
    assert cause.trace_id not in (relay[0].trace_id, delivery.trace_id)
    assert relay[0].links == ((cause.trace_id, cause.span_id),)
    assert delivery.links == ((cause.trace_id, cause.span_id),)
