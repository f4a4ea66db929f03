"""The Agent Orchestration service: agents, a task queue with leases, a durable
workflow engine with sagas, and monitoring, on the shared framework."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bhiv import catalog
from bhiv.agents.definitions import builtin_workflows
from bhiv.agents.engine import engine_hook
from bhiv.agents.models import Base, CatchUp, Overlap, Trigger, TriggerKind, WorkflowDefinition
from bhiv.agents.monitoring import OrchestrationCollector
from bhiv.agents.routes import agents, stats, tasks, triggers, workflows
from bhiv.agents.settings import AgentsSettings
from bhiv.agents.subscription import subscription_hook
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.core.db import Database

log = logging.getLogger("bhiv.agents")


def install_builtin_workflows(db: Database) -> None:
    """Store each shipped definition version once; a shipped version is never changed in place."""
    for wf in builtin_workflows():
        spec = {"steps": [s.model_dump(mode="json") for s in wf.steps]}
        with db.session() as s:
            existing = s.scalar(
                select(WorkflowDefinition).where(
                    WorkflowDefinition.name == wf.name, WorkflowDefinition.version == wf.version
                )
            )
            if existing is not None:
                if existing.spec != spec:
                    log.warning(
                        "workflow %s v%s differs from the stored one; bump its version",
                        wf.name,
                        wf.version,
                    )
                continue
            s.add(
                WorkflowDefinition(
                    name=wf.name,
                    version=wf.version,
                    description=wf.description,
                    source="builtin",
                    spec=spec,
                )
            )
            try:
                s.commit()
            except IntegrityError:  # another replica stored it first
                s.rollback()


# Shipped triggers, created disabled once (a name an operator deleted is created again
# at the next start, disabled; one they changed is left alone).
def builtin_triggers(settings: AgentsSettings) -> list[Trigger]:
    return [
        Trigger(
            name="low-stock-reorder",
            description="Logistics publishes inventory.low_stock when a movement (e.g. a reservation) takes an "
            "item to or below its reorder level: run inventory-reorder for it.",
            kind=TriggerKind.event,
            event_type="inventory.low_stock",
            workflow="inventory-reorder",
            input={
                "event_id": "{{ event.id }}",
                "item_id": "{{ event.data.item_id }}",
                "sku": "{{ event.data.sku }}",
            },
        ),
        Trigger(
            name="nightly-integration-sync",
            description="Every night at 02:00 (BHIV_AGENTS_DEFAULT_TIMEZONE): run external-integration-sync. "
            "Set input.sync_job_id to your sync job before switching it on.",
            kind=TriggerKind.schedule,
            cron="0 2 * * *",
            timezone=settings.agents_default_timezone,
            workflow="external-integration-sync",
            input={"sync_job_id": 1},
        ),
    ]


def install_builtin_triggers(db: Database, settings: AgentsSettings) -> None:
    for trigger in builtin_triggers(settings):
        with db.session() as s:
            if s.scalar(select(Trigger.id).where(Trigger.name == trigger.name)) is not None:
                continue
            trigger.enabled = False
            trigger.builtin = True
            trigger.catch_up = CatchUp.skip
            trigger.overlap = Overlap.skip
            s.add(trigger)
            try:
                s.commit()
            except IntegrityError:  # another replica stored it first
                s.rollback()


@asynccontextmanager
async def setup_hook(app: FastAPI) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(install_builtin_workflows, app.state.db)
    await anyio.to_thread.run_sync(install_builtin_triggers, app.state.db, app.state.settings)
    app.state.metrics.registry.register(OrchestrationCollector(app.state.db))
    yield


SPEC = ServiceSpec(
    name="agent-orchestration",
    title="BHIV Agent Orchestration",
    description="Agents, task routing with priorities and leases, a durable workflow engine with retries, "
    "timeouts and saga compensation, and monitoring.",
    settings_class=AgentsSettings,
    routers=(agents.router, tasks.router, workflows.router, triggers.router, stats.router),
    metadata=Base.metadata,
    migrations="bhiv.agents:migrations",
    capabilities=catalog.get("agent-orchestration").capabilities,
    lifespan_hooks=(setup_hook, engine_hook, subscription_hook),
    openapi_tags=[
        {
            "name": "agents",
            "description": "Registration, status, heartbeats; external agents claim tasks.",
        },
        {"name": "tasks", "description": "Submit, route, lease, complete and cancel tasks."},
        {"name": "workflows", "description": "Versioned definitions and durable runs."},
        {
            "name": "triggers",
            "description": "Start workflows on domain events, inbound webhooks and cron schedules.",
        },
        {"name": "monitoring", "description": "Success rates, latency and queue depth."},
    ],
)


def create_app(settings: AgentsSettings | None = None) -> FastAPI:
    app = _create_app(SPEC, settings)
    # Public: integrations' event deliveries prove themselves with their signature.
    app.include_router(triggers.receiver)
    return app
