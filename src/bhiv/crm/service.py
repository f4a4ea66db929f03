"""The CRM service: customers and their interactions, a scored sales pipeline
with conversion into customers, support tickets with SLAs, and analytics, on
the shared framework."""

from __future__ import annotations

from fastapi import FastAPI

from bhiv import catalog
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.crm.models import OUTBOX, Base
from bhiv.crm.routes import analytics, customers, interactions, leads, tickets
from bhiv.crm.settings import CrmSettings

SPEC = ServiceSpec(
    name="crm",
    title="BHIV CRM",
    description="Customers with an interaction timeline, leads in a scored sales pipeline that "
    "convert into customers, support tickets with SLA due times, and analytics. Models and "
    "policies: docs/crm.md.",
    settings_class=CrmSettings,
    routers=(customers.router, interactions.router, leads.router, tickets.router, analytics.router),
    metadata=Base.metadata,
    migrations="bhiv.crm:migrations",
    lifespan_hooks=(OUTBOX.relay,),
    capabilities=catalog.get("crm").capabilities,
    openapi_tags=[
        {
            "name": "customers",
            "description": "Customer profiles: search, filters, tags; the delete policy.",
        },
        {
            "name": "interactions",
            "description": "Calls, emails, meetings and notes on each customer's timeline.",
        },
        {
            "name": "leads",
            "description": "The sales pipeline, lead scores and conversion into customers.",
        },
        {
            "name": "tickets",
            "description": "Support tickets: priorities, SLA due times, workflow, comments.",
        },
        {"name": "analytics", "description": "Customers, pipeline and support figures."},
    ],
)


def create_app(settings: CrmSettings | None = None) -> FastAPI:
    return _create_app(SPEC, settings)
