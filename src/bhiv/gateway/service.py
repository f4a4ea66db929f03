"""The API gateway service, on the shared framework.

``bhiv.core`` gives it what every service has (settings, JWT/API-key auth,
problem+json, request IDs, JSON access logs, health, metrics); the gateway adds
the proxy route in front of everything under ``/api/``, its own endpoints, and
a lifespan that runs discovery and health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI

from bhiv import catalog
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.core.background import background, repeat
from bhiv.gateway import batch, console, routes
from bhiv.gateway.access import EdgeAuth
from bhiv.gateway.discovery import local_services
from bhiv.gateway.edge import Edge, ProxyRoute
from bhiv.gateway.forwarder import Forwarder
from bhiv.gateway.metrics import GatewayMetrics
from bhiv.gateway.openapi import OpenApiAggregator
from bhiv.gateway.probes import HealthChecker
from bhiv.gateway.ratelimit import RateLimiter
from bhiv.gateway.registry import DiscoveredService, Registry
from bhiv.gateway.settings import GatewaySettings

log = logging.getLogger("bhiv.gateway")


@dataclass
class Gateway:
    """The gateway's parts, reachable from handlers as ``app.state.gateway``."""

    settings: GatewaySettings
    registry: Registry
    forwarder: Forwarder
    limiter: RateLimiter
    edge: Edge
    openapi: OpenApiAggregator
    metrics: GatewayMetrics
    # Kubernetes discovery: the BhivModules as GET /services shows them (None locally).
    modules: Callable[[], list[dict[str, Any]]] | None = None

    def apply_discovery(self, services: list[DiscoveredService]) -> None:
        removed = self.registry.update(services)
        for upstream in removed:
            asyncio.get_running_loop().create_task(self._retire(upstream))
        log.info(
            "routing %s",
            ", ".join(
                f"{u.prefix} -> {u.name} ({len(u.instances)})"
                for u in self.registry.upstreams.values()
            )
            or "nothing",
        )

    async def _retire(self, upstream: object) -> None:
        # Requests in flight on a removed service may finish before its pool closes.
        await asyncio.sleep(upstream.policy.timeout_seconds)  # type: ignore[attr-defined]
        if upstream.name not in self.registry.upstreams:  # type: ignore[attr-defined]
            await self.forwarder.forget(upstream)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def run_gateway(app: FastAPI) -> AsyncIterator[None]:
    gateway: Gateway = app.state.gateway
    settings = gateway.settings
    watcher = None
    if settings.gateway_discovery == "kubernetes":
        from bhiv.gateway.kubernetes import BhivModuleWatcher
        from bhiv.kube import default_namespace

        watcher = BhivModuleWatcher(
            settings.gateway_namespace or default_namespace(),
            gateway.apply_discovery,
            kubeconfig=settings.gateway_kubeconfig,
        )
        watcher.start()
        gateway.modules = watcher.index.module_views
        log.info("discovering BhivModules in namespace %s", watcher.namespace)
    else:
        gateway.apply_discovery(local_services(settings))
    checker = HealthChecker(settings, gateway.registry, gateway.metrics)
    learning = functools.partial(_learn_public_operations, gateway)
    try:
        async with (
            background("gateway-health-checks", checker.run),
            background("gateway-public-operations", learning),
        ):
            yield
    finally:
        if watcher is not None:
            await watcher.stop()
        await checker.aclose()
        await gateway.openapi.aclose()
        await gateway.forwarder.aclose()
        await gateway.limiter.aclose()


async def _learn_public_operations(gateway: Gateway, stop: asyncio.Event) -> None:
    """Keep each service's public operations (declared in its OpenAPI) up to date."""
    settings = gateway.settings
    await repeat(
        stop,
        settings.gateway_health_interval_seconds,
        functools.partial(
            gateway.openapi.learn_public_operations, settings.gateway_openapi_max_age_seconds
        ),
        what="learning public operations",
    )


async def discovery_synced(app: FastAPI) -> None:
    if not app.state.gateway.registry.synced:
        raise RuntimeError("the first list of services has not arrived yet")


SPEC = ServiceSpec(
    name="gateway",
    title="BHIV API gateway",
    description="One entry point for every BHIV service: `/api/<service>/...` routed to the service, "
    "with authentication, role checks, rate limits, load balancing, retries and circuit breakers. "
    "`GET /services` shows what is routed and its health; `POST /batch` runs several requests in one; "
    "`POST /auth/token` exchanges an API key for a short-lived JWT.",
    settings_class=GatewaySettings,
    routers=(),
    capabilities=catalog.get("gateway").capabilities,
    lifespan_hooks=(run_gateway,),
    readiness_checks={"discovery": discovery_synced},
    streaming_paths=("/api/",),
    cors_expose_headers=("RateLimit", "RateLimit-Policy", "Retry-After"),
    openapi_tags=[{"name": "gateway", "description": "The registry, batches and tokens."}],
)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    # httpx logs every request at INFO, full URL and query included: the
    # access log already has one line per request, without the query.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app = _create_app(SPEC, settings)
    metrics = GatewayMetrics(app.state.metrics.registry)
    registry = Registry(settings.route_policy)
    forwarder = Forwarder(settings, registry, metrics)
    limiter = RateLimiter(
        {"ip": settings.gateway_rate_limit_ip, "key": settings.gateway_rate_limit_key},
        metrics,
        settings.gateway_redis_url.get_secret_value() if settings.gateway_redis_url else None,
    )
    edge = Edge(settings, registry, EdgeAuth(settings, app.state.authenticator), limiter, forwarder)
    app.state.gateway = Gateway(
        settings,
        registry,
        forwarder,
        limiter,
        edge,
        OpenApiAggregator(registry, settings.gateway_openapi_max_age_seconds),
        metrics,
    )
    # The aggregated document replaces FastAPI's own at the same URL (/docs reads it).
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) != app.openapi_url
    ]
    # Routed traffic is matched first: it is most of what the gateway serves.
    app.router.routes.insert(0, ProxyRoute(edge))
    # Limited per address before their own credential checks, like routed requests.
    app.include_router(routes.router, dependencies=[Depends(routes.limit_by_address)])
    app.include_router(batch.router, dependencies=[Depends(routes.limit_by_address)])
    # The web console: public pages and assets (no credential needed to load
    # them); every call they make goes through the API above with the user's own.
    console.mount(app)
    return app
