from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from bhiv import catalog
from bhiv.core.settings import ServiceSettings

# The services a workflow step or a service agent may call, by catalog name.
CALLABLE_SERVICES = ("logistics", "crm", "llm-query", "integrations")


def _platform_urls() -> dict[str, str]:
    return {name: catalog.service_url(name) for name in CALLABLE_SERVICES}


class AgentsSettings(ServiceSettings):
    """Agent orchestration settings: everything in :class:`ServiceSettings`, port 8003,
    where the other services are, and the engine's timings. docs/agents.md explains each."""

    service_name = "agent-orchestration"
    port: int = Field(catalog.get("agent-orchestration").port, ge=1, le=65535)

    agents_service_urls: dict[str, str] = Field(
        default_factory=_platform_urls,
        description="JSON object: BHIV service name -> base URL, merged over each service's "
        "BHIV_<SERVICE>_URL (else its catalog port on 127.0.0.1).",
    )
    agents_service_api_key: SecretStr | None = Field(
        None,
        description="API key the engine presents to other services. Unset: a JWT signed with the shared secret.",
    )
    agents_poll_interval_seconds: float = Field(
        0.2, gt=0, le=10, description="How often the engine looks for work."
    )
    agents_run_lease_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="A replica driving a run holds it this long between renewals.",
    )
    agents_max_active_runs: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Runs one replica drives at once; the rest wait for it or another replica.",
    )
    agents_task_lease_seconds: float = Field(
        60.0, ge=1, le=86_400, description="Default lease an external agent gets on a claimed task."
    )
    agents_aging_seconds: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Queued tasks gain one priority point per this many seconds of waiting.",
    )
    agents_heartbeat_timeout_seconds: float = Field(
        60.0, ge=1, le=86_400, description="An external agent silent this long is shown as offline."
    )
    agents_llm_model: str | None = Field(
        None, description="Model alias LLM agents use when neither they nor the task name one."
    )

    @field_validator("agents_service_urls", mode="after")
    @classmethod
    def _merge_defaults(cls, value: dict[str, str]) -> dict[str, str]:
        return {**_platform_urls(), **value}
