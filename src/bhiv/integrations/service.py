"""The Integrations service: connections to external APIs, signed inbound and
outbound webhooks, the domain events BHIV services publish, and data sync
jobs, on the shared framework. docs/integrations.md is the guide."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bhiv import catalog
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.integrations.connections import ConnectionCaller
from bhiv.integrations.crypto import SecretBox
from bhiv.integrations.delivery import delivery_worker
from bhiv.integrations.egress import EgressPolicy
from bhiv.integrations.models import Base
from bhiv.integrations.monitoring import delivery_metrics
from bhiv.integrations.routes import connections, events, inbound, outbound, sync
from bhiv.integrations.settings import IntegrationsSettings
from bhiv.integrations.sync import sync_scheduler


@asynccontextmanager
async def http_caller(app: FastAPI) -> AsyncIterator[None]:
    """Lifespan hook: the pooled client external API calls share (closed on stop)."""
    app.state.caller = ConnectionCaller(app.state.db, app.state.egress)
    try:
        yield
    finally:
        await app.state.caller.aclose()


SPEC = ServiceSpec(
    name="integrations",
    title="BHIV Integrations",
    description="Connections to external APIs (encrypted credentials, test calls, health and metrics); inbound "
    "webhooks verified with Standard Webhooks signatures; outbound webhooks with retries, dead-lettering and "
    "replay; domain events from BHIV services' outboxes; incremental data sync jobs. Guide: docs/integrations.md.",
    settings_class=IntegrationsSettings,
    routers=(
        connections.router,
        inbound.sources,
        outbound.router,
        events.router,
        sync.router,
    ),
    metadata=Base.metadata,
    migrations="bhiv.integrations:migrations",
    capabilities=catalog.get("integrations").capabilities,
    openapi_tags=[
        {
            "name": "connections",
            "description": "External APIs: auth, limits, test calls, health and metrics.",
        },
        {
            "name": "inbound webhooks",
            "description": "Sources that send us signed webhooks, and what they sent.",
        },
        {
            "name": "outbound webhooks",
            "description": "Subscriptions, their deliveries, retries and replays.",
        },
        {
            "name": "events",
            "description": "Domain events from BHIV services, and the catalogue of types.",
        },
        {"name": "sync", "description": "Incremental data sync jobs and their run history."},
    ],
    # Entered in order: the caller exists before the sync scheduler uses it.
    lifespan_hooks=(http_caller, delivery_worker, sync_scheduler, delivery_metrics),
)


def create_app(settings: IntegrationsSettings | None = None) -> FastAPI:
    app = _create_app(SPEC, settings)
    app.state.secret_box = SecretBox(app.state.settings.credential_secrets())
    app.state.egress = EgressPolicy.from_settings(app.state.settings)
    # Senders authenticate with signatures, not bearer tokens, so the receiving
    # endpoint is mounted outside the framework's authenticated routers.
    app.include_router(inbound.receiver)
    return app
