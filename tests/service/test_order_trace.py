"""One order, one trace, in a real OpenTelemetry Collector.

The whole platform runs as users run it (`bhiv up`, every service, SQLite), with
only the standard ``OTEL_*`` variables pointing its exporters at the collector
hack/k8s-tools builds (tests/support/otelcol.py). One order goes through the
gateway to the customer-order-processing workflow; what the collector wrote out
must be one trace: gateway -> agent-orchestration -> (the workflow's steps, run
later by its engine) -> CRM, Logistics and Integrations, every parent present.
The events the order caused reach a webhook subscriber in traces of their own
(the outbox relay's, each delivery's), linked back to the request that caused them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.service.agents.conftest import ENGINE_ENV
from tests.service.agents.helpers import FINAL_RUN, wait_for
from tests.service.integrations.peers import Received, Receiver, receiver
from tests.support.otelcol import Collector, otel_collector
from tests.support.otlp import ReceivedSpan
from tests.support.up import Up, bhiv_up

INTERNAL, SERVER, CLIENT = 1, 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
HOPS = {"gateway", "agent-orchestration", "crm", "logistics", "integrations"}
# Each service step of customer-order-processing and the server span its call makes.
STEP_CALLS = {
    "find_customer": ("crm", "GET /customers"),
    "create_customer": ("crm", "POST /customers"),
    "shipment": ("logistics", "POST /shipments"),
    "record_interaction": ("crm", "POST /customers/{customer_id}/interactions"),
    "notify": ("integrations", "POST /events"),
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, Up, Receiver]]:
    with (
        otel_collector(tmp_path_factory.mktemp("otelcol")) as collector,
        receiver() as hooks,
        bhiv_up(
            tmp_path_factory.mktemp("up"),
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                # The webhook subscriber listens on loopback.
                "BHIV_EGRESS_ALLOWED_NETWORKS": "127.0.0.0/8",
                "BHIV_WORKER_POLL_SECONDS": "0.1",
                "BHIV_OUTBOX_RELAY_INTERVAL": "0.2",
                **ENGINE_ENV,
            },
        ) as up,
    ):
        yield collector, up, hooks


def _one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def _order_trace(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The spans of the trace holding agent-orchestration's `POST /runs` (one in this test)."""
    runs = [s for s in spans if s.service == "agent-orchestration" and s.name == "POST /runs"]
    return [s for s in spans if runs and s.trace_id == runs[0].trace_id]


def _orphans(trace: list[ReceivedSpan]) -> list[ReceivedSpan]:
    ids = {s.span_id for s in trace}
    return [s for s in trace if s.parent_span_id and s.parent_span_id not in ids]


def _linked(spans: list[ReceivedSpan], name: str, to: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and (to.trace_id, to.span_id) in s.links]


def _place_order(up: Up, hooks: Receiver) -> tuple[dict, list[Received]]:
    """An order for 2 of an item with 3 in stock and reorder level 2: besides order.placed
    (the workflow's last step) Logistics' outbox publishes inventory.low_stock."""
    with httpx.Client(base_url=up.url("gateway"), headers=up.auth, timeout=30) as api:
        r = api.post(
            "/api/integrations/subscriptions",
            json={"url": f"{hooks.url}/orders", "event_types": ["order.*", "inventory.low_stock"]},
        )
        assert r.status_code == 201, r.text
        sku = f"TRACE-{uuid.uuid4().hex[:8]}".upper()
        r = api.post(
            "/api/logistics/inventory",
            json={"sku": sku, "name": "Traced", "quantity": 3, "reorder_level": 2},
        )
        assert r.status_code == 201, r.text
        order = {
            "customer": {"name": "Asha Rao", "email": f"{sku.lower()}@acme.example"},
            "order": {
                "reference": sku,
                "destination": "5 Park St, Kolkata",
                "lines": [{"sku": sku, "quantity": 2}],
            },
        }
        r = api.post(
            "/api/agents/runs", json={"workflow": "customer-order-processing", "input": order}
        )
        assert r.status_code == 201, r.text
        run = wait_for(
            lambda: api.get(f"/api/agents/runs/{r.json()['id']}").json(),
            lambda run: run["status"] in FINAL_RUN,
            60,
            0.2,
        )
    assert run["status"] == "succeeded", run
    return run, hooks.wait_for("/orders", 2)


def test_one_order_is_one_trace_in_the_collector(
    platform: tuple[Collector, Up, Receiver],
) -> None:
    collector, up, hooks = platform
    run, webhooks = _place_order(up, hooks)
    ran = {s["step_id"] for s in run["steps"] if s["status"] == "succeeded"}
    assert set(STEP_CALLS) <= ran, run["steps"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Each process exports its spans in batches as they end: wait for every span
        # asserted on below, and for every parent the order's spans name.
        trace = _order_trace(spans)
        names = {(s.service, s.name) for s in trace}
        steps = {s.attributes.get("bhiv.step_id") for s in trace if s.kind == INTERNAL}
        deliveries = [s for s in spans if s.name == "webhook delivery" and s.links]
        return (
            ("gateway", "POST /api/{path}") in names
            and set(STEP_CALLS.values()) <= names
            and ran <= steps
            and not _orphans(trace)
            and len(deliveries) >= 2
            and any(s.name == "outbox relay" and s.links for s in spans)
        )

    try:
        spans = collector.wait_for(complete, timeout=30)
    except AssertionError:
        trace = _order_trace(collector.received())
        raise AssertionError(
            f"the order's trace never completed; orphans: {_orphans(trace)}; "
            f"spans: {sorted((s.service, s.name) for s in trace)}"
        ) from None
    trace = _order_trace(spans)

    # One root, the gateway's server span; every other span's parent is in the trace.
    (root,) = [s for s in trace if not s.parent_span_id]
    assert (root.service, root.kind, root.name) == ("gateway", SERVER, "POST /api/{path}")
    assert HOPS <= {s.service for s in trace}
    assert not _orphans(trace)
    by_id = {s.span_id: s for s in trace}

    # gateway -> agent-orchestration: the gateway's client span is the run request's parent.
    start = _one(trace, service="agent-orchestration", name="POST /runs")
    forward = by_id[start.parent_span_id]
    assert (forward.service, forward.kind) == ("gateway", CLIENT)
    assert forward.parent_span_id == root.span_id

    # The engine runs the steps after that request has answered: each step is a child of
    # it, and each service step's call the parent of the called service's server span.
    step_spans = [s for s in trace if s.service == "agent-orchestration" and s.kind == INTERNAL]
    steps = {s.attributes["bhiv.step_id"]: s for s in step_spans}
    # Each step ran once (every step of this order succeeds at its first attempt).
    assert set(steps) == ran and len(step_spans) == len(ran), step_spans
    assert all(s.parent_span_id == start.span_id for s in steps.values())
    assert steps["notify"].name == "workflow step service"
    assert steps["match"].name == "workflow step set"
    for step_id, (service, name) in STEP_CALLS.items():
        server = _one(trace, service=service, kind=SERVER, name=name)
        call = by_id[server.parent_span_id]
        assert (call.service, call.kind) == ("agent-orchestration", CLIENT), (step_id, call)
        assert call.parent_span_id == steps[step_id].span_id, step_id

    # Logistics' outbox relays inventory.low_stock in a trace of its own, linked to the
    # shipment's request (which reserved the stock) ...
    shipment = _one(trace, service="logistics", name="POST /shipments")
    (relay,) = _linked(spans, "outbox relay", shipment)
    assert relay.service == "logistics" and relay.trace_id != root.trace_id
    # ... and each delivery links to the request that caused its event: the shipment's
    # for inventory.low_stock, the notify step's POST /events for order.placed.
    accepted = _one(trace, service="integrations", name="POST /events")
    for cause, event_type in ((shipment, "inventory.low_stock"), (accepted, "order.placed")):
        (delivery,) = _linked(spans, "webhook delivery", cause)
        assert delivery.service == "integrations" and delivery.trace_id != root.trace_id
        # The webhook itself carries the delivery's trace, which the subscriber continues.
        (webhook,) = [w for w in webhooks if w.json["type"] == event_type]
        assert webhook.headers["traceparent"].split("-")[1] == delivery.trace_id
