"""Prometheus metrics per upstream, beside the framework's per-route ones.

The framework already counts every request by route template (for proxied
requests, ``/api/<service>/{path}``); these add what only the gateway sees:
attempts per upstream instance, retries, ejections, breakers, rate limiting.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bhiv.core.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_requests = Counter(
            "bhiv_gateway_upstream_requests",
            "Attempts sent to an upstream instance, by outcome (HTTP status, or timeout, refused, reset).",
            ["service", "instance", "outcome"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "bhiv_gateway_upstream_duration_seconds",
            "Time from sending an attempt to the upstream's response headers.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "bhiv_gateway_retries",
            "Attempts after the first, by service.",
            ["service"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            "bhiv_gateway_retry_budget_exhausted",
            "Retries not made because the service's retry budget was spent.",
            ["service"],
            registry=registry,
        )
        self.ejections = Counter(
            "bhiv_gateway_ejections",
            "Instances taken out of rotation after consecutive failures.",
            ["service", "instance"],
            registry=registry,
        )
        self.breaker_rejections = Counter(
            "bhiv_gateway_breaker_rejections",
            "Requests answered 503 at once because the service's circuit breaker was open.",
            ["service"],
            registry=registry,
        )
        self.instance_up = Gauge(
            "bhiv_gateway_instance_available",
            "1 when an instance is in rotation (healthy and not ejected), else 0.",
            ["service", "instance"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "bhiv_gateway_rate_limited",
            "Requests refused with 429, by policy.",
            ["policy"],
            registry=registry,
        )
        self.rate_limit_backend_errors = Counter(
            "bhiv_gateway_rate_limit_backend_errors",
            "Redis calls that failed; the gateway then limits in memory until Redis answers again.",
            registry=registry,
        )
