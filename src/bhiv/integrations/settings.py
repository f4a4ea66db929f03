from __future__ import annotations

from pydantic import Field, SecretStr

from bhiv import catalog
from bhiv.core.settings import CommaList, NetworkList, ServiceSettings


def _local_url(service: str) -> str:
    return f"http://127.0.0.1:{catalog.get(service).port}"


class IntegrationsSettings(ServiceSettings):
    """Integrations settings: everything in :class:`ServiceSettings`, port 8005, and
    the workers' schedules. docs/integrations.md explains each."""

    service_name = "integrations"
    port: int = Field(catalog.get("integrations").port, ge=1, le=65535)

    credentials_key: SecretStr | None = Field(
        None,
        description="Comma-separated secrets; the first encrypts stored credentials and webhook secrets, "
        "all of them decrypt (key rotation). Unset: <data_dir>/credentials-key, created once "
        "(a start-up error where shared secrets are required, see require_shared_secrets).",
    )
    egress_allowed_hosts: CommaList = Field(
        default_factory=lambda: ["localhost", "127.0.0.0/8", "::1"],
        description="Comma-separated host names ('*.example.com' for subdomains), IP addresses or CIDR "
        "networks that connections and subscriptions may call; '*' allows any host.",
    )
    egress_allowed_networks: NetworkList = Field(
        default_factory=list,
        description="Comma-separated CIDR networks of non-public addresses (loopback, private, link-local, ...) "
        "that calls may nonetheless connect to. Unset: none; the platform's own services are always reachable.",
    )
    logistics_url: str = Field(
        default_factory=lambda: _local_url("logistics"), description="Sync target."
    )
    crm_url: str = Field(default_factory=lambda: _local_url("crm"), description="Sync target.")
    service_api_key: SecretStr | None = Field(
        None,
        description="API key the sync worker presents to BHIV services. Unset: a JWT signed with the shared secret.",
    )

    webhook_tolerance_seconds: int = Field(
        300,
        ge=1,
        le=300,
        description="Inbound webhook timestamps may be this far from now (the spec's 5 minutes at most).",
    )

    delivery_max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts before a delivery is dead-lettered."
    )
    delivery_retry_initial_seconds: float = Field(
        5.0, gt=0, le=3600, description="Wait after the first failure."
    )
    delivery_retry_base: float = Field(
        4.0, ge=1, le=10, description="Each wait is this many times the previous."
    )
    delivery_retry_max_seconds: float = Field(
        36_000.0, gt=0, le=7 * 86_400, description="Longest wait."
    )
    delivery_retry_jitter: float = Field(
        0.2, ge=0, le=1, description="Waits are stretched by up to this fraction."
    )
    delivery_timeout_seconds: float = Field(
        15.0, gt=0, le=120, description="A receiver must answer within this."
    )
    delivery_concurrency: int = Field(16, ge=1, le=256, description="Deliveries in flight at once.")
    delivery_lease_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="A claimed delivery is retried by any worker if not finished by then.",
    )
    worker_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="How often the workers look for due work."
    )

    sync_max_pages: int = Field(
        1000, ge=1, le=100_000, description="Pages one sync run reads at most."
    )
    sync_lease_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="A running sync whose worker stops is marked interrupted after this.",
    )

    def credential_secrets(self) -> list[str]:
        if self.credentials_key is not None:
            keys = [
                k.strip() for k in self.credentials_key.get_secret_value().split(",") if k.strip()
            ]
            if keys:
                return keys
        return [self.local_secret("credentials-key", "BHIV_CREDENTIALS_KEY")]
