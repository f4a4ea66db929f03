from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, SecretStr, field_validator

from bhiv import catalog
from bhiv.agents.schedules import zone
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

    agents_events_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks secret (whsec_...) of the subscription through which the integrations "
        "service delivers domain events to this service's triggers. Unset: derived from the shared JWT "
        "secret, so every replica agrees (required with RS256).",
    )
    agents_events_url: str | None = Field(
        None,
        description="Where the integrations service delivers events for triggers. Unset: this service's "
        "BHIV_AGENT_ORCHESTRATION_URL (else its catalog port on 127.0.0.1) + /trigger-events.",
    )
    agents_subscription_check_seconds: float = Field(
        60.0,
        ge=0.1,
        le=3600,
        description="How often the integrations subscription is checked against the enabled triggers.",
    )
    agents_default_timezone: str = Field(
        "UTC",
        description="Time zone of the shipped nightly schedule (IANA name, e.g. Europe/Berlin).",
    )

    @field_validator("agents_default_timezone", mode="after")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    def events_url(self) -> str:
        if self.agents_events_url:
            return self.agents_events_url
        return catalog.service_url("agent-orchestration").rstrip("/") + "/trigger-events"

    def events_secret(self) -> str:
        """The subscription's signing secret: given, or HKDF of the shared JWT secret."""
        if self.agents_events_secret is not None:
            return self.agents_events_secret.get_secret_value()
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"bhiv agent-orchestration trigger events",
        ).derive(self.jwt_signing_secret().encode())
        return "whsec_" + base64.b64encode(key).decode()

    @field_validator("agents_service_urls", mode="after")
    @classmethod
    def _merge_defaults(cls, value: dict[str, str]) -> dict[str, str]:
        return {**_platform_urls(), **value}
