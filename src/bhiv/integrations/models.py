"""Integrations tables: connections to external APIs, inbound webhook sources and
their messages, outbound subscriptions with their deliveries and attempts, the
domain events received from BHIV services, and sync jobs with their runs.

Every secret column holds a Fernet token (see ``crypto.py``), never plaintext.
Workers keep their whole state here (``next_attempt_at``, ``locked_until``,
sync cursors), so a restart resumes where the last process stopped.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bhiv.core.db import Timestamps, UTCDateTime, new_metadata, string_enum, utcnow


class Base(DeclarativeBase):
    metadata = new_metadata()


class AuthType(enum.StrEnum):
    none = "none"
    bearer = "bearer"
    basic = "basic"
    api_key = "api_key"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    dead = "dead"


class SyncTarget(enum.StrEnum):
    logistics_suppliers = "logistics.suppliers"
    crm_customers = "crm.customers"


class ConflictPolicy(enum.StrEnum):
    source_wins = "source_wins"
    bhiv_wins = "bhiv_wins"


class RunTrigger(enum.StrEnum):
    manual = "manual"
    schedule = "schedule"


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class Connection(Timestamps, Base):
    __tablename__ = "connections"
    __table_args__ = (CheckConstraint("timeout_seconds > 0", name="timeout_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    base_url: Mapped[str] = mapped_column(String(2048))
    auth_type: Mapped[AuthType] = mapped_column(
        string_enum(AuthType, "auth_type", length=32), default=AuthType.none
    )
    api_key_header: Mapped[str | None] = mapped_column(String(100))
    credentials: Mapped[str | None] = mapped_column(Text)  # sealed JSON
    timeout_seconds: Mapped[float] = mapped_column(Float, default=10.0)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    health_path: Mapped[str] = mapped_column(String(500), default="/")
    # Call metrics, kept with the connection so every replica adds to one count.
    calls: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_total: Mapped[float] = mapped_column(Float, default=0.0)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_called_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookSource(Timestamps, Base):
    """A sender of inbound webhooks, each with its own endpoint and secret."""

    __tablename__ = "webhook_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)  # sealed whsec_ secret
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class InboundMessage(Base):
    __tablename__ = "inbound_messages"
    __table_args__ = (
        # The deduplication key: a sender's retry of a message is the same row.
        UniqueConstraint("source_id", "message_id", name="uq_inbound_messages_source_message"),
        Index("ix_inbound_messages_source_id_id", "source_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("webhook_sources.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[bytes] = mapped_column(
        LargeBinary
    )  # exactly as received: the signature covers these bytes
    content_type: Mapped[str | None] = mapped_column(String(200))
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)


class Subscription(Timestamps, Base):
    """An outbound webhook endpoint and the event types it receives."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(Text)  # sealed whsec_ secret
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """A domain event received from a BHIV service (deduplicated on ``event_id``)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_type", "type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The W3C traceparent of the request that caused the event (the publisher's, or the
    # one that posted it); every delivery's span links to it. NULL with tracing off.
    traceparent: Mapped[str | None] = mapped_column(String(55))


class Delivery(Timestamps, Base):
    """One event on its way to one subscription: pending until a 2xx, or dead."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_subscription_event"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_subscription_id_id", "subscription_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    status: Mapped[DeliveryStatus] = mapped_column(
        string_enum(DeliveryStatus, "delivery_status", length=32), default=DeliveryStatus.pending
    )
    attempts: Mapped[int] = mapped_column(
        Integer, default=0
    )  # in the current round; a replay starts a new one
    replays: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    event: Mapped[Event] = relationship(lazy="joined")


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery_id_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)


class SyncJob(Timestamps, Base):
    __tablename__ = "sync_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="RESTRICT"), index=True
    )
    source_path: Mapped[str] = mapped_column(String(500))
    records_path: Mapped[str] = mapped_column(String(200), default="items")
    key_field: Mapped[str] = mapped_column(String(200), default="id")
    cursor_field: Mapped[str | None] = mapped_column(String(200))
    cursor_param: Mapped[str] = mapped_column(String(100), default="updated_since")
    page_param: Mapped[str] = mapped_column(String(100), default="cursor")
    next_page_path: Mapped[str] = mapped_column(String(200), default="next_cursor")
    page_size_param: Mapped[str | None] = mapped_column(String(100))
    page_size: Mapped[int] = mapped_column(Integer, default=100)
    target: Mapped[SyncTarget] = mapped_column(string_enum(SyncTarget, "sync_target", length=32))
    field_map: Mapped[dict[str, str]] = mapped_column(JSON)
    conflict_policy: Mapped[ConflictPolicy] = mapped_column(
        string_enum(ConflictPolicy, "conflict_policy", length=32),
        default=ConflictPolicy.source_wins,
    )
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The incremental state: the largest cursor value of the last complete run.
    cursor_value: Mapped[str | None] = mapped_column(Text)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (
        Index("ix_sync_runs_job_id_id", "job_id", "id"),
        Index("ix_sync_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("sync_jobs.id", ondelete="CASCADE"))
    trigger: Mapped[RunTrigger] = mapped_column(string_enum(RunTrigger, "run_trigger", length=32))
    status: Mapped[RunStatus] = mapped_column(
        string_enum(RunStatus, "run_status", length=32), default=RunStatus.queued
    )
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    conflicts: Mapped[int] = mapped_column(Integer, default=0)
    cursor_before: Mapped[str | None] = mapped_column(Text)
    cursor_after: Mapped[str | None] = mapped_column(Text)
    record_errors: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)


class SyncLink(Base):
    """Which BHIV record a source record became, and what this job last wrote to it."""

    __tablename__ = "sync_links"
    __table_args__ = (
        UniqueConstraint("job_id", "source_key", name="uq_sync_links_job_source_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("sync_jobs.id", ondelete="CASCADE"))
    source_key: Mapped[str] = mapped_column(String(255))
    target_id: Mapped[int] = mapped_column(Integer)
    written: Mapped[dict[str, Any]] = mapped_column(JSON)
    synced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
