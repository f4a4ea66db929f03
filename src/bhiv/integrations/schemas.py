"""Request and response bodies. Secrets (credentials, webhook signing secrets) are
accepted as ``SecretStr`` and never appear in a read model: a signing secret is
shown once, in the answer that created or rotated it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    WithJsonSchema,
)

from bhiv.core.fields import StorableText, UTCTimestamp
from bhiv.integrations.connections import check_relative_path
from bhiv.integrations.models import (
    AuthType,
    ConflictPolicy,
    DeliveryStatus,
    RunStatus,
    RunTrigger,
    SyncTarget,
)
from bhiv.integrations.signing import check_secret

_URL = TypeAdapter(
    Annotated[
        AnyUrl,
        UrlConstraints(max_length=2000, allowed_schemes=["http", "https"], host_required=True),
    ]
)


def _http_url(value: str) -> str:
    try:
        url = _URL.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None
    if url.username or url.password:
        raise ValueError(
            "must not carry credentials; put them in 'credentials', where they are encrypted"
        )
    return str(url)


Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), StorableText
]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Description = Annotated[str, StringConstraints(max_length=2000), StorableText]
# Validated as a URL, kept as the normalised string.
HttpUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000),
    AfterValidator(_http_url),
    WithJsonSchema({"type": "string", "format": "uri", "minLength": 1, "maxLength": 2000}),
]
# A path under a connection's base URL: it must stay there (no dot segments, ...).
UrlPath = Annotated[
    str,
    StringConstraints(max_length=500, pattern=r"^/[!-~]*$"),
    AfterValidator(check_relative_path),
]
DottedPath = Annotated[
    str, StringConstraints(max_length=200, pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
]
ParamName = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9_.\[\]-]+$")]
HeaderName = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9-]+$")]
EventType = Annotated[
    str, StringConstraints(max_length=100, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
]
# An exact type, "*" for every type, or "prefix.*" for a family ("shipment.*").
EventPattern = Annotated[
    str, StringConstraints(max_length=100, pattern=r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")
]
WebhookSecret = Annotated[
    SecretStr, AfterValidator(lambda s: SecretStr(check_secret(s.get_secret_value())))
]
CredentialText = Annotated[SecretStr, Field(min_length=1, max_length=4096)]

# Documentation text, not a secret (S105 reads the name).
_SECRET_DOC = "Signing secret, 'whsec_' + base64 of 24-64 bytes. Omit it to have one generated."  # noqa: S105


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- connections ------------------------------------------------------------------


class Credentials(_Model):
    """Secrets for the connection's auth type: ``token`` (bearer), ``username`` and
    ``password`` (basic) or ``api_key`` (API-key header). Stored encrypted, never returned."""

    token: CredentialText | None = Field(
        None, description="Bearer token.", examples=["sk_live_abc123"]
    )
    username: CredentialText | None = Field(None, description="Basic auth user.", examples=["bhiv"])
    password: CredentialText | None = Field(
        None, description="Basic auth password.", examples=["s3cret"]
    )
    api_key: CredentialText | None = Field(
        None, description="API key sent in api_key_header.", examples=["k-123"]
    )


class ConnectionCreate(_Model):
    name: Name = Field(description="Unique name.", examples=["acme-erp"])
    description: Description | None = Field(
        None, description="What it connects to.", examples=["Acme's ERP API"]
    )
    base_url: HttpUrl = Field(
        description="Base URL; paths are appended to it.", examples=["http://127.0.0.1:9000/api"]
    )
    auth_type: AuthType = Field(
        AuthType.none, description="How calls authenticate.", examples=["bearer"]
    )
    api_key_header: HeaderName | None = Field(
        None,
        description="Header carrying the API key (api_key auth; default X-API-Key).",
        examples=["X-API-Key"],
    )
    credentials: Credentials | None = Field(None, description="Secrets for auth_type (write-only).")
    timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Per-call timeout.", examples=[10]
    )
    rate_limit_per_minute: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Calls per minute at most (per replica); null: unlimited.",
        examples=[600],
    )
    health_path: UrlPath = Field(
        "/", description="Path the test call and health check use.", examples=["/health"]
    )


class ConnectionUpdate(_Model):
    description: Description | None = Field(None, description="What it connects to.")
    base_url: HttpUrl | None = Field(
        None, description="Base URL.", examples=["http://127.0.0.1:9000/api"]
    )
    auth_type: AuthType | None = Field(
        None, description="How calls authenticate.", examples=["basic"]
    )
    api_key_header: HeaderName | None = Field(None, description="Header carrying the API key.")
    credentials: Credentials | None = Field(
        None, description="Replaces the stored secrets (write-only)."
    )
    timeout_seconds: float | None = Field(None, gt=0, le=120, description="Per-call timeout.")
    rate_limit_per_minute: int | None = Field(
        None, ge=1, le=100_000, description="Calls per minute; null: unlimited."
    )
    health_path: UrlPath | None = Field(None, description="Path the test call uses.")


class ConnectionMetrics(BaseModel):
    calls: int = Field(description="Calls made through the connection.", examples=[120])
    errors: int = Field(
        description="Calls that failed (transport error or status >= 400).", examples=[3]
    )
    error_rate: float = Field(description="errors / calls.", examples=[0.025])
    avg_latency_ms: float | None = Field(description="Mean latency.", examples=[42.5])
    last_latency_ms: float | None = Field(examples=[38.1])
    last_status_code: int | None = Field(examples=[200])
    last_error: str | None = Field(examples=[None])
    last_called_at: dt.datetime | None
    last_success_at: dt.datetime | None


class ConnectionRead(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["acme-erp"])
    description: str | None
    base_url: str = Field(examples=["http://127.0.0.1:9000/api"])
    auth_type: AuthType
    api_key_header: str | None
    has_credentials: bool = Field(description="Whether secrets are stored (they are never shown).")
    timeout_seconds: float
    rate_limit_per_minute: int | None
    health_path: str
    health: Literal["unknown", "healthy", "failing"] = Field(
        description="unknown: never called; healthy: the last call succeeded; failing: it did not."
    )
    metrics: ConnectionMetrics
    created_at: dt.datetime
    updated_at: dt.datetime


class TestCall(_Model):
    path: UrlPath | None = Field(
        None, description="Path to GET (default: the connection's health_path)."
    )


class TestCallResult(BaseModel):
    ok: bool = Field(description="The API answered with a status below 400.", examples=[True])
    status_code: int | None = Field(examples=[200])
    latency_ms: float = Field(examples=[12.3])
    error: str | None = Field(description="Why the call failed, if it did.", examples=[None])


# --- inbound webhooks ---------------------------------------------------------------


class WebhookSourceCreate(_Model):
    name: Slug = Field(
        description="Unique slug; the endpoint is POST /webhooks/{name}.",
        examples=["acme-payments"],
    )
    description: Description | None = Field(None, examples=["Payment events from Acme"])
    secret: WebhookSecret | None = Field(None, description=_SECRET_DOC)
    active: bool = Field(True, description="Inactive sources answer 410 Gone.")


class WebhookSourceUpdate(_Model):
    description: Description | None = None
    active: bool | None = Field(None, description="Inactive sources answer 410 Gone.")


class SecretRotation(_Model):
    secret: WebhookSecret | None = Field(None, description=_SECRET_DOC)


class WebhookSourceRead(_Read):
    id: int = Field(examples=[1])
    name: str = Field(examples=["acme-payments"])
    description: str | None
    active: bool
    endpoint: str = Field(
        description="Where the sender posts.", examples=["/webhooks/acme-payments"]
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookSourceWithSecret(WebhookSourceRead):
    secret: str = Field(
        description="The signing secret: shown only now.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class InboundAck(BaseModel):
    id: int = Field(description="The stored message.", examples=[7])
    status: Literal["accepted", "duplicate"] = Field(
        description="duplicate: this webhook-id was received before and is ignored."
    )


class InboundMessageRead(BaseModel):
    id: int
    source_id: int
    message_id: str = Field(
        description="The sender's webhook-id.", examples=["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"]
    )
    event_type: str | None = Field(
        description="The body's 'type', if it is JSON with one.", examples=["invoice.paid"]
    )
    content_type: str | None
    body: str = Field(description="The raw body as text (invalid UTF-8 replaced).")
    payload: Any = Field(description="The body parsed as JSON, or null.")
    signed_at: dt.datetime = Field(description="The sender's webhook-timestamp.")
    received_at: dt.datetime
    duplicates: int = Field(description="Later arrivals of the same webhook-id, ignored.")


# --- outbound webhooks ----------------------------------------------------------------


class SubscriptionCreate(_Model):
    url: HttpUrl = Field(
        description="Where deliveries are POSTed.", examples=["http://127.0.0.1:9100/hooks"]
    )
    description: Description | None = Field(None, examples=["Ops alerts"])
    event_types: list[EventPattern] = Field(
        min_length=1,
        max_length=50,
        description="Types to receive: exact, 'prefix.*' or '*'.",
        examples=[["inventory.low_stock", "shipment.*"]],
    )
    secret: WebhookSecret | None = Field(None, description=_SECRET_DOC)
    active: bool = Field(
        True, description="Deliveries to an inactive subscription wait until it is active."
    )


class SubscriptionUpdate(_Model):
    url: HttpUrl | None = None
    description: Description | None = None
    event_types: list[EventPattern] | None = Field(None, min_length=1, max_length=50)
    active: bool | None = Field(None, description="Re-activating clears disabled_reason.")


class SubscriptionRead(_Read):
    id: int = Field(examples=[1])
    url: str
    description: str | None
    event_types: list[str]
    active: bool
    disabled_reason: str | None = Field(
        description="Why the service deactivated it (e.g. the receiver answered 410)."
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class SubscriptionWithSecret(SubscriptionRead):
    secret: str = Field(description="The signing secret: shown only now.")


class AttemptRead(_Read):
    attempt: int = Field(description="1-based within the delivery's current round.")
    attempted_at: dt.datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None = Field(description="The start of the receiver's answer.")


class DeliveryRead(BaseModel):
    id: int
    subscription_id: int
    event_id: str = Field(description="Also the webhook-id header.", examples=["evt_5f0c..."])
    event_type: str
    status: DeliveryStatus = Field(
        description="pending (retries scheduled), succeeded, or dead (dead-lettered)."
    )
    attempts: int = Field(description="Attempts in the current round.")
    replays: int = Field(description="Manual replays so far.")
    next_attempt_at: dt.datetime | None = Field(
        description="When a pending delivery is next tried."
    )
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DeliveryDetail(DeliveryRead):
    attempt_log: list[AttemptRead]


class ReplayResult(BaseModel):
    replayed: int = Field(description="Deliveries queued again.", examples=[3])


# --- domain events ---------------------------------------------------------------------


class EventIn(_Model):
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = Field(
        description="Unique event ID, the deduplication key.",
        examples=["evt_5f0c8a2e9b6d4c1fa3e7d2b8c9a1f0e4"],
    )
    type: EventType = Field(examples=["shipment.status_changed"])
    source: Slug = Field(description="The publishing service.", examples=["logistics"])
    occurred_at: UTCTimestamp = Field(examples=["2026-11-26T10:00:00Z"])
    data: dict[str, Any] = Field(
        description="The event's payload.", examples=[{"shipment_id": 1, "to": "picked"}]
    )
    traceparent: (
        Annotated[str, StringConstraints(pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
        | None
    ) = Field(
        None,
        description="The W3C traceparent of the request that caused the event (as CloudEvents' "
        "distributed tracing extension), sent by an outbox relay. Unset: the request posting the "
        "event is its cause. Each delivery's span links to it.",
        examples=["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
    )


class EventAccepted(BaseModel):
    id: str
    duplicate: bool = Field(description="The ID was received before; nothing was done.")
    deliveries: int = Field(description="Deliveries queued for subscribers.")


class EventRead(BaseModel):
    id: str
    type: str
    source: str
    occurred_at: dt.datetime
    received_at: dt.datetime
    data: dict[str, Any]


class EventTypeInfo(BaseModel):
    type: str = Field(examples=["inventory.low_stock"])
    source: str = Field(examples=["logistics"])
    description: str
    example: dict[str, Any]


# --- sync ------------------------------------------------------------------------------


class _SyncFields(_Model):
    records_path: DottedPath = Field("items", description="Where the records list is in each page.")
    key_field: DottedPath = Field(
        "id", description="The record field that identifies it at the source."
    )
    cursor_field: DottedPath | None = Field(
        None,
        description="The record field that grows on every change (e.g. updated_at); null: full refresh.",
    )
    cursor_param: ParamName = Field(
        "updated_since", description="Query parameter carrying the saved cursor."
    )
    page_param: ParamName = Field(
        "cursor", description="Query parameter carrying the next-page token."
    )
    next_page_path: DottedPath = Field(
        "next_cursor", description="Where the next-page token is; null/absent: last page."
    )
    page_size_param: ParamName | None = Field(
        "limit", description="Query parameter for the page size, if any."
    )
    page_size: int = Field(100, ge=1, le=1000)
    conflict_policy: ConflictPolicy = Field(
        ConflictPolicy.source_wins,
        description="When a record changed in BHIV since the job last wrote it: source_wins overwrites, "
        "bhiv_wins keeps BHIV's version (counted as skipped and as a conflict).",
    )
    interval_seconds: int | None = Field(
        None, ge=1, le=30 * 86_400, description="Run every this many seconds; null: on demand only."
    )
    enabled: bool = True


class SyncJobCreate(_SyncFields):
    name: Name = Field(examples=["acme-suppliers"])
    connection_id: int = Field(ge=1, le=2**31 - 1, description="The source connection.")
    source_path: UrlPath = Field(
        description="Path of the records, under the connection's base URL.", examples=["/vendors"]
    )
    target: SyncTarget = Field(
        description="Where records are upserted.", examples=["logistics.suppliers"]
    )
    field_map: dict[Annotated[str, StringConstraints(max_length=100)], DottedPath] = Field(
        min_length=1,
        max_length=50,
        description="Target field -> source field (dotted path).",
        examples=[
            {"name": "company_name", "email": "contact.email", "lead_time_days": "lead_days"}
        ],
    )


class SyncJobUpdate(_Model):
    name: Name | None = None
    source_path: UrlPath | None = None
    records_path: DottedPath | None = None
    key_field: DottedPath | None = None
    cursor_field: DottedPath | None = None
    cursor_param: ParamName | None = None
    page_param: ParamName | None = None
    next_page_path: DottedPath | None = None
    page_size_param: ParamName | None = None
    page_size: int | None = Field(None, ge=1, le=1000)
    field_map: dict[Annotated[str, StringConstraints(max_length=100)], DottedPath] | None = Field(
        None, min_length=1, max_length=50
    )
    conflict_policy: ConflictPolicy | None = None
    interval_seconds: int | None = Field(None, ge=1, le=30 * 86_400)
    enabled: bool | None = None


class SyncJobRead(_Read):
    id: int
    name: str
    connection_id: int
    source_path: str
    records_path: str
    key_field: str
    cursor_field: str | None
    cursor_param: str
    page_param: str
    next_page_path: str
    page_size_param: str | None
    page_size: int
    target: SyncTarget
    field_map: dict[str, str]
    conflict_policy: ConflictPolicy
    interval_seconds: int | None
    enabled: bool
    cursor_value: str | None = Field(description="The saved incremental state.")
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class SyncRunRead(_Read):
    id: int
    job_id: int
    trigger: RunTrigger
    status: RunStatus
    queued_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    pages: int
    created: int
    updated: int
    skipped: int = Field(description="Unchanged records, and conflicts kept as BHIV has them.")
    failed: int = Field(description="Records the target refused; see record_errors.")
    conflicts: int = Field(
        description="Records changed in BHIV since the last sync that the source also changed."
    )
    cursor_before: str | None
    cursor_after: str | None
    record_errors: list[dict[str, str]] = Field(
        description="The first failures: source key and reason."
    )
    error: str | None = Field(description="Why the run failed as a whole.")
