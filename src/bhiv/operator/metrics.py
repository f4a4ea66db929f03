"""Prometheus metrics of the operator, served on their own port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
reconciles = Counter(
    "bhiv_operator_reconciles", "Reconciles run, by result.", ["result"], registry=registry
)
reconcile_seconds = Histogram(
    "bhiv_operator_reconcile_duration_seconds",
    "Time one reconcile took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=registry,
)
modules = Gauge(
    "bhiv_operator_modules",
    "Modules known to the operator, by Ready reason.",
    ["ready", "reason"],
    registry=registry,
)
reconcile_errors = Counter(
    "bhiv_operator_reconcile_errors",
    "Reconciles that failed, by reason: the API server's HTTP status, else the error's type.",
    ["reason"],
    registry=registry,
)
queue_depth = Gauge(
    "bhiv_operator_queue_depth", "Modules waiting to be reconciled.", registry=registry
)
queue_oldest_seconds = Gauge(
    "bhiv_operator_queue_oldest_seconds",
    "How long the module waiting longest to be reconciled has waited.",
    registry=registry,
)
queue_wait_seconds = Histogram(
    "bhiv_operator_queue_wait_duration_seconds",
    "Time from a module being queued to a worker taking it.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
    registry=registry,
)
api_requests = Counter(
    "bhiv_operator_api_requests",
    "Requests the operator's own client sent to the Kubernetes API, by verb (get, list, "
    "watch, create, patch, delete, ...) and resource; Kopf's watches of modules and pods "
    "go through Kopf's client and are not counted.",
    ["verb", "resource"],
    registry=registry,
)
resyncs = Counter(
    "bhiv_operator_resyncs",
    "Times every module was queued for a reconcile by the periodic resync.",
    registry=registry,
)


def count_request(verb: str, resource: str) -> None:
    api_requests.labels(verb, resource).inc()
