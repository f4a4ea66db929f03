"""The Logistics service: inventory with a stock ledger, suppliers, warehouses,
shipments and analytics, on the shared framework."""

from __future__ import annotations

from fastapi import FastAPI

from bhiv import catalog
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.logistics.models import OUTBOX, Base
from bhiv.logistics.routes import analytics, inventory, partners, shipments
from bhiv.logistics.settings import LogisticsSettings

SPEC = ServiceSpec(
    name="logistics",
    title="BHIV Logistics",
    description="Inventory with an append-only stock ledger, suppliers, warehouses, shipments and analytics.",
    settings_class=LogisticsSettings,
    routers=(
        inventory.router,
        partners.suppliers,
        partners.warehouses,
        shipments.router,
        analytics.router,
    ),
    metadata=Base.metadata,
    migrations="bhiv.logistics:migrations",
    capabilities=catalog.get("logistics").capabilities,
    lifespan_hooks=(OUTBOX.relay,),
    openapi_tags=[
        {"name": "inventory", "description": "Items, the stock ledger and reorder alerts."},
        {"name": "suppliers", "description": "Who supplies items."},
        {"name": "warehouses", "description": "Where items are stored."},
        {"name": "shipments", "description": "Outbound shipments and their tracking."},
        {"name": "analytics", "description": "Inventory value and stock health."},
    ],
)


def create_app(settings: LogisticsSettings | None = None) -> FastAPI:
    return _create_app(SPEC, settings)
