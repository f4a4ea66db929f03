"""The platform's services: ports, gateway prefixes and startup order.

The one table for the whole code base: ``bhiv up`` starts services from it, the CLI
resolves ``bhiv serve NAME`` with it, and the gateway routes by its prefixes. The
chart's stage and port helpers, the CRD's service enum and port text, the chart's
per-service values and their schema, the sample BhivModules and the docs' tables are
generated from it: after editing it, run ``make generate`` (``make check`` fails
while they differ).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    port: int
    prefix: str
    # Startup stage from the seed: a service starts once every service in an
    # earlier stage is ready.
    stage: int
    # "module:function" returning the FastAPI app; resolved lazily so that
    # importing the catalog never imports every service.
    app_factory: str
    capabilities: tuple[str, ...] = field(default=())
    # One line for the README's table, and where the service's guide is.
    summary: str = ""
    guide: str = ""
    # Whether the service keeps data (a database of its own; the gateway keeps none).
    database: bool = True
    # Keys of the namespace's shared Secret (bhiv-shared-secrets, the chart's own
    # Secrets) the service's pods read: every one verifies tokens; only integrations
    # encrypts stored credentials.
    shared_secrets: tuple[str, ...] = ("BHIV_JWT_SECRET",)
    # Services that call this one without depending on it (so a NetworkPolicy drawn
    # from dependsOn must let them in too): integrations writes synced records.
    called_by: tuple[str, ...] = ()


SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in (
        ServiceEntry(
            name="integrations",
            port=8005,
            prefix="/api/integrations",
            stage=1,
            app_factory="bhiv.integrations.service:create_app",
            capabilities=("external_api_management", "webhook_handling", "data_synchronization"),
            summary=(
                "external API connections (encrypted credentials), signed inbound/outbound "
                "webhooks with retries and dead letters, domain events, incremental data sync"
            ),
            guide="docs/integrations.md",
            shared_secrets=("BHIV_JWT_SECRET", "BHIV_CREDENTIALS_KEY"),
        ),
        ServiceEntry(
            name="logistics",
            port=8001,
            prefix="/api/logistics",
            stage=3,
            app_factory="bhiv.logistics.service:create_app",
            capabilities=("inventory_management", "supplier_management", "shipment_tracking"),
            summary=(
                "inventory with a stock ledger, suppliers, warehouses, shipments, reorder alerts, "
                "analytics"
            ),
            guide="",  # the README documents it
            called_by=("integrations",),
        ),
        ServiceEntry(
            name="crm",
            port=8002,
            prefix="/api/crm",
            stage=3,
            app_factory="bhiv.crm.service:create_app",
            capabilities=("customer_management", "lead_management", "support_tickets"),
            summary=(
                "customers, interactions, leads and pipeline with scoring and conversion, support "
                "tickets with SLAs, analytics"
            ),
            guide="docs/crm.md",
            called_by=("integrations",),
        ),
        ServiceEntry(
            name="agent-orchestration",
            port=8003,
            prefix="/api/agents",
            stage=4,
            app_factory="bhiv.agents.service:create_app",
            capabilities=("agent_management", "task_orchestration", "workflow_execution"),
            summary=(
                "agents, task routing with leases, a durable workflow engine with sagas, the "
                "seed's workflows"
            ),
            guide="docs/agents.md",
        ),
        ServiceEntry(
            name="llm-query",
            port=8004,
            prefix="/api/llm",
            stage=2,
            app_factory="bhiv.llm.service:create_app",
            capabilities=("llm_processing", "model_management", "safety_filtering"),
            summary=(
                "OpenAI-compatible `/v1/chat/completions` and `/query`, model registry, routing "
                "with fallbacks, cache, safety filtering, conversations, usage, budgets"
            ),
            guide="docs/llm.md",
        ),
        ServiceEntry(
            name="gateway",
            port=8000,
            prefix="",  # the gateway owns the root; every other prefix routes through it
            stage=5,
            app_factory="bhiv.gateway.service:create_app",
            capabilities=(
                "routing",
                "load_balancing",
                "rate_limiting",
                "batch_processing",
                "discovery",
            ),
            summary=(
                "routing, discovery, load balancing, retries and breakers, edge auth, rate "
                "limits, batch, one aggregated OpenAPI, the web console"
            ),
            guide="docs/gateway.md",
            database=False,
        ),
    )
}


# Each service's own port, by name: what a BhivModule without `port` listens on.
DEFAULT_PORTS: dict[str, int] = {entry.name: entry.port for entry in SERVICES.values()}


def get(name: str) -> ServiceEntry:
    try:
        return SERVICES[name]
    except KeyError:
        known = ", ".join(sorted(SERVICES))
        raise KeyError(f"unknown service {name!r}; known services: {known}") from None


def url_variable(name: str) -> str:
    """The environment variable naming where service ``name`` runs: ``BHIV_LLM_QUERY_URL``."""
    return f"BHIV_{name.upper().replace('-', '_')}_URL"


def service_url(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Where service ``name`` runs: its ``BHIV_<SERVICE>_URL`` (which `bhiv up`, also
    under --port-offset, exports to every child), else its catalog port on 127.0.0.1."""
    environ = os.environ if environ is None else environ
    return environ.get(url_variable(name)) or f"http://127.0.0.1:{DEFAULT_PORTS[name]}"


def in_startup_order() -> list[list[ServiceEntry]]:
    """Services grouped by stage, earliest stage first."""
    stages: dict[int, list[ServiceEntry]] = {}
    for entry in SERVICES.values():
        stages.setdefault(entry.stage, []).append(entry)
    return [sorted(stages[s], key=lambda e: e.name) for s in sorted(stages)]
