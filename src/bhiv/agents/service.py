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
from bhiv.agents.models import Base, WorkflowDefinition
from bhiv.agents.monitoring import OrchestrationCollector
from bhiv.agents.routes import agents, stats, tasks, workflows
from bhiv.agents.settings import AgentsSettings
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


@asynccontextmanager
async def setup_hook(app: FastAPI) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(install_builtin_workflows, app.state.db)
    app.state.metrics.registry.register(OrchestrationCollector(app.state.db))
    yield


SPEC = ServiceSpec(
    name="agent-orchestration",
    title="BHIV Agent Orchestration",
    description="Agents, task routing with priorities and leases, a durable workflow engine with retries, "
    "timeouts and saga compensation, and monitoring.",
    settings_class=AgentsSettings,
    routers=(agents.router, tasks.router, workflows.router, stats.router),
    metadata=Base.metadata,
    migrations="bhiv.agents:migrations",
    capabilities=catalog.get("agent-orchestration").capabilities,
    lifespan_hooks=(setup_hook, engine_hook),
    openapi_tags=[
        {
            "name": "agents",
            "description": "Registration, status, heartbeats; external agents claim tasks.",
        },
        {"name": "tasks", "description": "Submit, route, lease, complete and cancel tasks."},
        {"name": "workflows", "description": "Versioned definitions and durable runs."},
        {"name": "monitoring", "description": "Success rates, latency and queue depth."},
    ],
)


def create_app(settings: AgentsSettings | None = None) -> FastAPI:
    return _create_app(SPEC, settings)
