"""Service settings: one pydantic-settings class per service, env prefix ``BHIV_``.

Each service subclasses :class:`ServiceSettings`, sets its own default port and adds
its own fields. Secrets are ``SecretStr`` so that they never print in a repr, a log
line or an error.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bhiv.core.private_files import private_dir, tighten

Role = Literal["admin", "editor", "viewer"]
MetricsAccess = Literal["public", "admin", "off"]
# BHIV_LOG_FORMAT (bhiv.core.logging): auto chooses text on a terminal, JSON otherwise.
LogFormat = Literal["auto", "json", "text"]


class MissingSharedSecret(RuntimeError):
    """A secret every replica must share was not given (see ``require_shared_secrets``)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) from settings; a bad one is a ValueError naming it."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (CIDR) or address") from None
    return tuple(networks)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_networks(value: list[str]) -> list[str]:
    parse_networks(value)  # a typo fails at startup, naming the entry
    return value


# A list setting written in the environment as comma-separated text
# (BHIV_CORS_ORIGINS=https://a.example,https://b.example). NoDecode: pydantic-settings
# would otherwise try to read the text as JSON first.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
# The same, each entry an IP network (CIDR) or address.
NetworkList = Annotated[
    list[str], NoDecode, BeforeValidator(_split_commas), AfterValidator(_check_networks)
]


def running_in_kubernetes() -> bool:
    # The kubelet sets this in every container, whatever enableServiceLinks says.
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bhiv"


class ApiKeySpec(BaseModel):
    """An API key as configured: its SHA-256 hex digest, never the key itself."""

    name: str = Field(description="Who holds the key; appears as the caller's subject.")
    role: Role = Field(description="The role the key grants.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key (`bhiv api-key` prints it)."
    )


class ServiceSettings(BaseSettings):
    """Settings shared by every service; environment variables ``BHIV_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="BHIV_", extra="ignore", frozen=True)

    # Set by each subclass: the catalog name of the service.
    service_name: ClassVar[str] = ""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in a container.")
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Field(
        default_factory=default_data_dir, description="SQLite files and local secrets."
    )
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db. "
        "Unset: a SQLite file <data_dir>/<service>.db.",
    )
    migrate_on_startup: bool = Field(
        True, description="Apply Alembic migrations when the service starts."
    )
    database_wait_seconds: float = Field(
        120,
        ge=0,
        le=3600,
        description="At startup, how long to wait for a database that does not answer yet.",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 shared secret. Unset (and no public key): <data_dir>/jwt-secret, created once.",
    )
    jwt_public_key: str | None = Field(
        None, description="PEM public key: verify RS256 tokens instead of HS256."
    )
    require_shared_secrets: bool = Field(
        default_factory=running_in_kubernetes,
        description="A missing shared secret (BHIV_JWT_SECRET, BHIV_CREDENTIALS_KEY) is a "
        "start-up error instead of one made in data_dir: every replica must use the same. "
        "Default: true in Kubernetes (KUBERNETES_SERVICE_HOST set), false elsewhere; the "
        "operator sets it true.",
    )
    jwt_issuer: str = "bhiv"
    jwt_audience: str = "bhiv"
    api_keys: list[ApiKeySpec] = Field(default_factory=list, description="JSON list of API keys.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = Field(
        "auto",
        description="auto: short human lines on a terminal, JSON otherwise (containers, "
        "files, pipes); json or text to choose.",
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413.")
    worker_threads: int = Field(
        16,
        ge=1,
        le=256,
        description="Threads running blocking handlers; also the connections kept open.",
    )
    max_concurrency: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Requests handled at once (more wait in the queue); bounds database connections too.",
    )
    max_queued_requests: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="Requests waiting for a turn; beyond them the server answers 503.",
    )
    queue_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest wait for a turn before a queued request is answered 503.",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="Open connections (and requests) before every new request is answered 503: "
        "a guard for file descriptors, far above max_concurrency.",
    )
    header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Time a connection has to send a request's line and headers; then closed.",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, le=300, description="Idle keep-alive connections are closed after this."
    )

    metrics_access: MetricsAccess = Field(
        "public",
        description="Who may read /metrics: public (anyone who reaches the port), admin, or off.",
    )
    trusted_proxies: NetworkList = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For/-Proto are believed; "
        "the client is the rightmost address not in them. Default: loopback only. Empty: none.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def sqlalchemy_url(self) -> str:
        if self.database_url is not None:
            return with_postgres_driver(self.database_url.get_secret_value())
        return f"sqlite:///{self.data_dir / f'{self.service_name}.db'}"

    def jwt_verification_key(self) -> tuple[str, str]:
        """(algorithm, key) used to verify tokens."""
        if self.jwt_public_key:
            return "RS256", self.jwt_public_key
        return "HS256", self.jwt_signing_secret()

    def jwt_signing_secret(self) -> str:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return self.local_secret("jwt-secret", "BHIV_JWT_SECRET")

    def local_secret(self, name: str, variable: str) -> str:
        """A shared secret that was not given: made once in data_dir for a local run;
        refused where replicas must share it, since each pod would make its own."""
        if self.require_shared_secrets:
            raise MissingSharedSecret(
                f"{variable} is not set, and every replica of every service must share it, "
                f"so no pod may make its own. Give it from a Secret: the Helm chart does; "
                f"with `kubectl apply -k manifests/` the operator creates the Secret "
                f"bhiv-shared-secrets (docs/helm.md, 'Shared secrets'). Set "
                f"BHIV_REQUIRE_SHARED_SECRETS=false only for a single local process."
            )
        return load_or_create_local_secret(self.data_dir / name)


def with_postgres_driver(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs (libpq's form, e.g. the ``uri`` key of a
    CloudNativePG app Secret) with the driver installed here: SQLAlchemy would
    otherwise pick psycopg2, which is not."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def load_or_create_local_secret(path: Path) -> str:
    """The local development signing secret, created once with mode 0600.

    Written to a temporary file and hard-linked into place, so concurrent first
    starts agree on one complete secret: whoever loses the race reads the winner's.
    """
    private_dir(path.parent)
    if path.exists():
        return tighten(path).read_text().strip()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
