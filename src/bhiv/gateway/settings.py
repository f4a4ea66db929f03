"""The gateway's settings: discovery, per-route policies, rate limits, limits.

Everything is an environment variable ``BHIV_GATEWAY_<FIELD>``; structured
values (upstreams, route policies, rate limits) are JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from bhiv import catalog
from bhiv.core.settings import MetricsAccess, Role, ServiceSettings

LoadBalancer = Literal["round_robin", "least_outstanding"]


class UpstreamSpec(BaseModel):
    """Where a service's instances are, when the catalog's defaults do not apply."""

    model_config = {"extra": "forbid"}

    urls: list[str] = Field(
        min_length=1, description="Base URLs of the instances, e.g. http://10.0.0.5:8001."
    )
    prefix: str | None = Field(
        None,
        pattern=r"^/api(/[A-Za-z0-9._~-]+)+$",
        description="Gateway prefix under /api/; defaults to the catalog's for a catalog service (required otherwise).",
    )

    @field_validator("urls")
    @classmethod
    def _plain_http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in urls]


class RoleRule(BaseModel):
    """The role a request needs when it matches ``path`` (a prefix under the service) and ``methods``."""

    model_config = {"extra": "forbid"}

    path: str = Field(
        "/", pattern=r"^/", description="Path prefix below the service's gateway prefix."
    )
    methods: list[str] | None = Field(
        None, description="HTTP methods this rule covers; all when unset."
    )
    role: Role


class RoutePolicy(BaseModel):
    """How the gateway treats one service's route."""

    model_config = {"extra": "forbid"}

    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for the upstream's answer."
    )
    connect_timeout_seconds: float = Field(2.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=5, description="Extra attempts for safe-to-repeat failures.")
    load_balancer: LoadBalancer = "round_robin"
    read_role: Role = Field("viewer", description="Role needed for GET, HEAD and OPTIONS.")
    write_role: Role = Field("editor", description="Role needed for every other method.")
    rules: list[RoleRule] = Field(default_factory=list, description="Stricter roles for sub-paths.")
    public_paths: list[str] = Field(
        default_factory=list,
        description="Path prefixes below the service reachable without a credential.",
    )


class RateSpec(BaseModel):
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    model_config = {"extra": "forbid"}

    rate: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=10_000_000)


class GatewaySettings(ServiceSettings):
    service_name = "gateway"

    port: int = Field(catalog.get("gateway").port, ge=1, le=65535)
    # The gateway stores nothing; these keep create_app from touching a database.
    migrate_on_startup: bool = False
    # The edge's metrics name every upstream instance's address: admins only by default.
    metrics_access: MetricsAccess = Field(
        "admin", description="Who may read /metrics: admin (default at the edge), public, or off."
    )

    gateway_discovery: Literal["local", "kubernetes"] = Field(
        "local",
        description="local: the catalog and BHIV_GATEWAY_UPSTREAMS; kubernetes: watch BhivModules.",
    )
    gateway_upstreams: dict[str, UpstreamSpec] | None = Field(
        None,
        description="Local discovery: service name -> list of base URLs (or {urls, prefix}). "
        "Set: exactly these services are routed. Unset: every catalog service at its port plus the offset.",
    )
    gateway_port_offset: int = Field(
        0, ge=0, le=50000, description="Added to catalog ports (bhiv up --port-offset)."
    )
    gateway_namespace: str | None = Field(
        None, description="Kubernetes discovery: the namespace to watch (default: the pod's own)."
    )
    gateway_kubeconfig: str | None = Field(
        None, description="Kubernetes discovery outside a cluster: a kubeconfig."
    )

    gateway_routes: dict[str, RoutePolicy] = Field(
        default_factory=dict,
        description="Service name -> route policy; unlisted services get the defaults.",
    )
    gateway_default_route: RoutePolicy = Field(default_factory=RoutePolicy)

    gateway_health_interval_seconds: float = Field(
        2.0, ge=0.1, le=300, description="Active health-check period."
    )
    gateway_health_timeout_seconds: float = Field(1.0, gt=0, le=60)
    gateway_unhealthy_threshold: int = Field(
        2, ge=1, le=100, description="Failed checks before an instance is down."
    )
    gateway_eject_after_failures: int = Field(
        3,
        ge=1,
        le=1000,
        description="Consecutive gateway failures (502-504, timeouts, resets) before ejection.",
    )
    gateway_ejection_seconds: float = Field(10.0, gt=0, le=3600)
    gateway_breaker_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive failures opening a breaker."
    )
    gateway_breaker_reset_seconds: float = Field(10.0, gt=0, le=3600)
    gateway_retry_budget_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Retries allowed per request, averaged: 0.2 = at most one retry per 5 requests.",
    )
    gateway_retry_budget_min_per_second: float = Field(5.0, ge=0, le=10_000)

    gateway_rate_limit_ip: RateSpec | None = Field(
        None, description="Token bucket per client IP; unset: none."
    )
    gateway_rate_limit_key: RateSpec | None = Field(
        None, description="Token bucket per caller (API key or token subject); unset: none."
    )
    gateway_redis_url: SecretStr | None = Field(
        None,
        description="redis://host:port/db: rate limits shared by every gateway replica. Unset: in memory.",
    )

    gateway_max_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest proxied request body (streamed, never held in memory).",
    )
    gateway_retry_buffer_bytes: int = Field(
        64 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        description="Bodies up to this size are kept so a retry can resend them.",
    )
    gateway_max_connections: int = Field(
        512, ge=1, le=100_000, description="Pooled connections per upstream service."
    )
    gateway_batch_max_items: int = Field(20, ge=1, le=1000)
    gateway_batch_concurrency: int = Field(10, ge=1, le=1000)
    gateway_batch_max_response_bytes: int = Field(
        1024 * 1024, ge=1024, description="Per batch item's answer."
    )
    gateway_token_ttl_seconds: int = Field(
        900, ge=60, le=86400, description="Lifetime of tokens from /auth/token."
    )
    gateway_jwt_private_key: SecretStr | None = Field(
        None, description="PEM private key to sign RS256 tokens when BHIV_JWT_PUBLIC_KEY is set."
    )
    gateway_openapi_max_age_seconds: float = Field(30.0, ge=0, le=3600)

    @field_validator("gateway_upstreams", mode="before")
    @classmethod
    def _urls_alone_are_enough(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"urls": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    @field_validator("gateway_upstreams")
    @classmethod
    def _every_upstream_has_a_prefix(
        cls, value: dict[str, UpstreamSpec] | None
    ) -> dict[str, UpstreamSpec] | None:
        for name, spec in (value or {}).items():
            entry = catalog.SERVICES.get(name)
            if name == "gateway" or (spec.prefix is None and (entry is None or not entry.prefix)):
                raise ValueError(
                    f"{name!r} is not a routable catalog service; give it a prefix under /api/"
                )
        return value

    def route_policy(self, service: str) -> RoutePolicy:
        return self.gateway_routes.get(service, self.gateway_default_route)
