"""LLM query tables: the provider and model registry, per-key policies, rate
windows, the response cache, conversations, usage records and safety decisions.

No table holds a provider key: providers name the environment variable that does.
Safety decisions keep categories, counts and scores, never the matched text.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bhiv.core.db import Timestamps, UTCDateTime, new_metadata, string_enum, utcnow


class Base(DeclarativeBase):
    metadata = new_metadata()


class Source(enum.StrEnum):
    config = "config"
    api = "api"


class UsageStatus(enum.StrEnum):
    ok = "ok"
    cache_hit = "cache_hit"
    blocked = "blocked"
    error = "error"


class Direction(enum.StrEnum):
    input = "input"
    output = "output"


class Decision(enum.StrEnum):
    allowed = "allowed"
    flagged = "flagged"
    redacted = "redacted"
    blocked = "blocked"


class Provider(Timestamps, Base):
    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint("timeout_seconds > 0", name="timeout_positive"),
        CheckConstraint("max_retries >= 0", name="retries_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    base_url: Mapped[str] = mapped_column(String(500))
    api_key_env: Mapped[str | None] = mapped_column(String(120))
    timeout_seconds: Mapped[float] = mapped_column(Float, default=60.0)
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[Source] = mapped_column(
        string_enum(Source, "provider_source"), default=Source.api
    )


class LlmModel(Timestamps, Base):
    __tablename__ = "llm_models"
    __table_args__ = (
        CheckConstraint(
            "input_price_per_1k >= 0 AND output_price_per_1k >= 0", name="prices_nonnegative"
        ),
        CheckConstraint("context_window > 0", name="context_window_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), unique=True)
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), index=True
    )
    provider_model: Mapped[str] = mapped_column(String(200))
    input_price_per_1k: Mapped[Decimal] = mapped_column(Numeric(18, 6), default=Decimal("0"))
    output_price_per_1k: Mapped[Decimal] = mapped_column(Numeric(18, 6), default=Decimal("0"))
    context_window: Mapped[int] = mapped_column(Integer, default=8192)
    max_output_tokens: Mapped[int | None] = mapped_column(Integer)
    tokenizer: Mapped[str] = mapped_column(String(20), default="cl100k_base")
    fallbacks: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[Source] = mapped_column(string_enum(Source, "model_source"), default=Source.api)

    provider: Mapped[Provider] = relationship(lazy="joined")


class KeyPolicy(Timestamps, Base):
    """What one caller (an API key or token subject) may do; ``default`` covers the rest."""

    __tablename__ = "key_policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), unique=True)
    safety_action: Mapped[str] = mapped_column(String(10))
    blocklist: Mapped[list[str]] = mapped_column(JSON, default=list)
    injection_threshold: Mapped[float] = mapped_column(Float, default=0.5)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    cache_enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class RateWindow(Base):
    """Requests and tokens one subject used in one minute (fixed windows)."""

    __tablename__ = "rate_windows"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch minute
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)


class CacheEntry(Base):
    __tablename__ = "cache_entries"
    __table_args__ = (UniqueConstraint("tenant", "key", name="uq_cache_entries_tenant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(64))
    model_alias: Mapped[str] = mapped_column(String(100))
    # The provider's answer before output filtering: each caller's own policy
    # is applied when it is served, so a lax key never leaks to a strict one.
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class Conversation(Timestamps, Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner", "tenant", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(200))
    model_alias: Mapped[str | None] = mapped_column(String(100))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    context_strategy: Mapped[str] = mapped_column(String(10), default="truncate")
    # Summary of every message up to and including summarized_through_id.
    summary: Mapped[str | None] = mapped_column(Text)
    summarized_through_id: Mapped[int | None] = mapped_column(Integer)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_id_id", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    model_alias: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_subject_created_at", "subject", "created_at"),
        Index("ix_usage_records_tenant_created_at", "tenant", "created_at"),
        Index("ix_usage_records_model_alias_created_at", "model_alias", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(50))
    model_alias: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str | None] = mapped_column(String(100))
    provider_model: Mapped[str | None] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[UsageStatus] = mapped_column(string_enum(UsageStatus, "usage_status"))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    usage_source: Mapped[str] = mapped_column(String(20), default="estimate")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 6), default=Decimal("0"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SafetyDecision(Base):
    __tablename__ = "safety_decisions"
    __table_args__ = (Index("ix_safety_decisions_subject_created_at", "subject", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(200))
    direction: Mapped[Direction] = mapped_column(string_enum(Direction, "safety_direction"))
    decision: Mapped[Decision] = mapped_column(string_enum(Decision, "safety_decision"), index=True)
    policy_action: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(500))
    score: Mapped[float] = mapped_column(Float)
    # [{"category": "email", "count": 2, "score": 0.9}], never the matched text.
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    model_alias: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
