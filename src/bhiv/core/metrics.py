"""Prometheus metrics for a service's HTTP traffic.

Each app gets its own registry, so several apps in one process (tests, the
gateway's in-process checks) never collide on metric names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bhiv.core.db import Database

# Buckets tuned for an API whose target p99 is tens of milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "<unmatched>"


class HttpMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        Info("bhiv_service", "The service behind these metrics.", registry=self.registry).info(
            {"name": service, "version": version}
        )
        self.requests = Counter(
            "bhiv_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bhiv_http_request_errors",
            "HTTP requests answered with a 5xx status, by route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bhiv_http_request_duration_seconds",
            "Time from request received to response sent, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "bhiv_http_requests_in_progress", "HTTP requests being handled.", registry=self.registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 500:
            self.errors.labels(method, route).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DatabaseCollector(Collector):
    """Figures read from the service's database at scrape time (subclasses: ``collect``),
    so every replica reports the same totals: aggregate them with max, not sum."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; nothing to describe up front
