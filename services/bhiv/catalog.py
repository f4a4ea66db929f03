"""The platform's services: ports, gateway prefixes and startup order.

One table for the whole code base: ``bhiv up`` starts services from it, the CLI
resolves ``bhiv serve NAME`` with it, and the gateway (once it exists) routes by
its prefixes. A service that has not been built yet is simply not listed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# Every kind of workload the platform defines (DESIGN.md), built or not: the
# Kubernetes operator accepts these names in BhivModule.spec.service.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8000,
    "logistics": 8001,
    "crm": 8002,
    "agent-orchestration": 8003,
    "llm-query": 8004,
    "integrations": 8005,
}


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


SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in (
        ServiceEntry(
            name="integrations",
            port=DEFAULT_PORTS["integrations"],
            prefix="/api/integrations",
            stage=1,
            app_factory="bhiv.integrations.service:create_app",
            capabilities=("external_api_management", "webhook_handling", "data_synchronization"),
        ),
        ServiceEntry(
            name="logistics",
            port=DEFAULT_PORTS["logistics"],
            prefix="/api/logistics",
            stage=3,
            app_factory="bhiv.logistics.service:create_app",
            capabilities=("inventory_management", "supplier_management", "shipment_tracking"),
        ),
        ServiceEntry(
            name="crm",
            port=DEFAULT_PORTS["crm"],
            prefix="/api/crm",
            stage=3,
            app_factory="bhiv.crm.service:create_app",
            capabilities=("customer_management", "lead_management", "support_tickets"),
        ),
        ServiceEntry(
            name="agent-orchestration",
            port=DEFAULT_PORTS["agent-orchestration"],
            prefix="/api/agents",
            stage=4,
            app_factory="bhiv.agents.service:create_app",
            capabilities=("agent_management", "task_orchestration", "workflow_execution"),
        ),
        ServiceEntry(
            name="llm-query",
            port=DEFAULT_PORTS["llm-query"],
            prefix="/api/llm",
            stage=2,
            app_factory="bhiv.llm.service:create_app",
            capabilities=("llm_processing", "model_management", "safety_filtering"),
        ),
        ServiceEntry(
            name="gateway",
            port=DEFAULT_PORTS["gateway"],
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
        ),
    )
}


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
