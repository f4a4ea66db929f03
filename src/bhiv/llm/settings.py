"""LLM query settings: everything in :class:`ServiceSettings`, port 8004, plus the
providers and models declared in configuration and the defaults of every policy.

Provider keys never appear here: a provider names the environment variable that
holds its key (``api_key_env``), read when a call is made.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

from bhiv import catalog
from bhiv.core.settings import ServiceSettings

# Only variables with this prefix may hold provider keys. Without it an admin
# could point a provider at their own URL and name BHIV_DATABASE_URL or
# BHIV_JWT_SECRET as its "key", and the service would send that secret along.
KEY_ENV_PREFIX = "BHIV_LLM_KEY_"
KEY_ENV_PATTERN = rf"^{KEY_ENV_PREFIX}[A-Z0-9_]{{1,100}}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$"

ProviderKind = Literal["openai", "anthropic"]
Tokenizer = Literal["cl100k_base", "estimate"]
SafetyAction = Literal["block", "redact", "flag"]
ContextStrategy = Literal["truncate", "summarize"]


class ProviderConfig(BaseModel):
    """A provider as declared in BHIV_LLM_PROVIDERS."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: ProviderKind = "openai"
    base_url: str = Field(pattern=r"^https?://\S+$", max_length=500)
    api_key_env: str | None = Field(None, pattern=KEY_ENV_PATTERN)
    timeout_seconds: float = Field(60.0, gt=0, le=600)
    max_retries: int = Field(2, ge=0, le=10)
    enabled: bool = True


class ModelConfig(BaseModel):
    """A model alias as declared in BHIV_LLM_MODELS."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(pattern=NAME_PATTERN)
    provider: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=200)
    input_price_per_1k: Decimal = Field(Decimal("0"), ge=0, max_digits=12, decimal_places=6)
    output_price_per_1k: Decimal = Field(Decimal("0"), ge=0, max_digits=12, decimal_places=6)
    context_window: int = Field(8192, ge=256, le=10_000_000)
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    tokenizer: Tokenizer = "cl100k_base"
    fallbacks: list[str] = Field(default_factory=list, max_length=10)
    enabled: bool = True


class LlmSettings(ServiceSettings):
    """Settings of the LLM query service; environment variables ``BHIV_LLM_*``."""

    service_name = "llm-query"
    port: int = Field(catalog.get("llm-query").port, ge=1, le=65535)

    llm_providers: list[ProviderConfig] = Field(
        default_factory=list, description="JSON list of providers, applied at every start."
    )
    llm_models: list[ModelConfig] = Field(
        default_factory=list, description="JSON list of model aliases, applied at every start."
    )
    llm_default_model: str | None = Field(
        None,
        description="Alias used when a /query names no model (default: the first enabled alias).",
    )
    llm_cache_ttl_seconds: int = Field(
        600, ge=0, le=30 * 24 * 3600, description="0 turns the cache off."
    )
    llm_safety_action: SafetyAction = Field(
        "redact", description="What the default policy does with findings."
    )
    llm_blocklist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated terms the default policy acts on."
    )
    llm_injection_threshold: float = Field(
        0.5, ge=0, le=1, description="Injection score that counts as a finding."
    )
    llm_requests_per_minute: int | None = Field(
        60, ge=1, description="Default per-key request limit; unset: none."
    )
    llm_tokens_per_minute: int | None = Field(
        100_000, ge=1, description="Default per-key token limit; unset: none."
    )
    llm_monthly_budget_usd: Decimal | None = Field(
        None, ge=0, description="Default per-key budget; unset: none."
    )
    llm_context_strategy: ContextStrategy = Field(
        "truncate", description="Default for new conversations."
    )
    llm_breaker_failures: int = Field(
        5, ge=1, le=1000, description="Consecutive failures that pause a model (per replica)."
    )
    llm_breaker_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long a paused model is skipped."
    )
    llm_reserve_output_tokens: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Tokens kept free for the answer when a request sets no max_tokens.",
    )

    @field_validator("llm_blocklist", mode="before")
    @classmethod
    def _split_terms(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("llm_models")
    @classmethod
    def _unique_aliases(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.alias in seen:
                raise ValueError(f"alias {m.alias!r} is declared twice")
            seen.add(m.alias)
        return models
