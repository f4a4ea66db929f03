"""Request and response bodies. The chat-completions ones follow OpenAI's schema
(so OpenAI SDKs work unchanged); the service's own additions live under
``bhiv`` in answers, and are opt-in fields (``fallbacks``, ``cache``) in requests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from bhiv.core.fields import StorableText
from bhiv.llm.settings import (
    KEY_ENV_PATTERN,
    NAME_PATTERN,
    ContextStrategy,
    ProviderKind,
    SafetyAction,
    Tokenizer,
)

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Alias = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Price = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=6)]
Tokens = Annotated[int, Field(ge=1, le=1_000_000)]
Term = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), StorableText
]
MAX_TEXT = 400_000
Text = Annotated[str, StorableText]
StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=100), StorableText]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- chat completions (OpenAI-compatible) ------------------------------------------


class TextPart(_Model):
    type: Literal["text"] = Field(description="Only text parts are accepted.", examples=["text"])
    text: Text = Field(max_length=MAX_TEXT, description="The text.", examples=["Hello"])


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who wrote the message; 'developer' is treated as 'system'.", examples=["user"]
    )
    content: Text | list[TextPart] = Field(
        description="Text, or a list of text parts (joined).",
        examples=["What is the capital of France?"],
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Optional author name.",
        examples=["alice"],
    )

    @field_validator("content")
    @classmethod
    def _bounded(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        size = len(value) if isinstance(value, str) else sum(len(p.text) for p in value)
        if size > MAX_TEXT:
            raise ValueError(f"at most {MAX_TEXT} characters")
        return value


class StreamOptions(_Model):
    include_usage: bool = Field(
        False, description="Send a last chunk with the usage before [DONE]."
    )


class ChatCompletionRequest(_Model):
    model: Alias = Field(description="A model alias from GET /models.", examples=["gpt-4o-mini"])
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=1000, description="The conversation so far."
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature.", examples=[0.2]
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling mass.", examples=[1.0]
    )
    max_tokens: Tokens | None = Field(None, description="Most tokens to generate.", examples=[256])
    max_completion_tokens: Tokens | None = Field(
        None, description="Newer name for max_tokens.", examples=[256]
    )
    n: Literal[1] = Field(1, description="Only one choice per request is supported.", examples=[1])
    stop: Text | list[StopSequence] | None = Field(
        None, description="Up to 4 stop sequences.", examples=[["\n\n"]]
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2, examples=[0])
    frequency_penalty: float | None = Field(None, ge=-2, le=2, examples=[0])
    seed: int | None = Field(
        None, ge=-(2**63), le=2**63 - 1, description="Best-effort determinism.", examples=[7]
    )
    user: Text | None = Field(
        None, max_length=200, description="End-user ID passed to the provider."
    )
    stream: bool = Field(False, description="Answer as server-sent events (chat.completion.chunk).")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    fallbacks: list[Alias] | None = Field(
        None,
        max_length=10,
        description="BHIV: aliases to try, in order, if the model fails (overrides the model's).",
        examples=[["claude-haiku"]],
    )
    cache: bool = Field(
        True, description="BHIV: use the response cache for this request.", examples=[True]
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        if isinstance(value, str) and not 1 <= len(value) <= 100:
            raise ValueError("a stop sequence has 1 to 100 characters")
        return value


class Usage(BaseModel):
    prompt_tokens: int = Field(examples=[12])
    completion_tokens: int = Field(examples=[5])
    total_tokens: int = Field(examples=[17])


class SafetySummary(BaseModel):
    decision: str = Field(
        description="allowed, flagged, redacted or blocked.", examples=["redacted"]
    )
    reason: str = Field(examples=["redacted: email x1"])
    score: float = Field(description="Highest finding score, 0-1.", examples=[0.9])
    categories: list[str] = Field(examples=[["email"]])


class SafetyPair(BaseModel):
    input: SafetySummary
    output: SafetySummary


class BhivExtension(BaseModel):
    cache_hit: bool = Field(
        description="Served from the response cache (cost 0).", examples=[False]
    )
    tokenizer: str = Field(
        description="How the service counted tokens: cl100k_base or estimate.",
        examples=["cl100k_base"],
    )
    usage_source: str = Field(
        description="Where `usage` comes from: provider, cl100k_base or estimate.",
        examples=["provider"],
    )
    cost_usd: Decimal = Field(description="Cost of this request.", examples=["0.000123"])
    provider: str = Field(examples=["openai"])
    provider_model: str = Field(examples=["gpt-4o-mini-2024-07-18"])
    attempts: list[dict[str, Any]] = Field(
        description="Every call made: model, provider, outcome, duration_ms."
    )
    safety: SafetyPair


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(examples=["Paris."])


class Choice(BaseModel):
    index: int = Field(examples=[0])
    message: AssistantMessage
    finish_reason: str = Field(description="stop, length or content_filter.", examples=["stop"])


class ChatCompletion(BaseModel):
    id: str = Field(examples=["chatcmpl-3f2a..."])
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time.", examples=[1767225600])
    model: str = Field(
        description="The alias that answered (a fallback if the first failed).",
        examples=["gpt-4o-mini"],
    )
    choices: list[Choice]
    usage: Usage
    bhiv: BhivExtension


class ModelCard(BaseModel):
    id: str = Field(examples=["gpt-4o-mini"])
    object: Literal["model"] = "model"
    created: int = Field(examples=[1767225600])
    owned_by: str = Field(description="The provider.", examples=["openai"])


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- /query ------------------------------------------------------------------------


class QueryRequest(_Model):
    prompt: Text = Field(
        min_length=1,
        max_length=MAX_TEXT,
        description="The question.",
        examples=["Summarise our return policy in one sentence."],
    )
    model: Alias | None = Field(
        None,
        description="Alias; default: the conversation's, then the service's.",
        examples=["gpt-4o-mini"],
    )
    system: Text | None = Field(
        None,
        max_length=MAX_TEXT,
        description="System prompt (without a conversation).",
        examples=["You are terse."],
    )
    conversation_id: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Continue this conversation: history is sent and kept.",
    )
    max_tokens: Tokens | None = Field(None, description="Most tokens to generate.", examples=[256])
    temperature: float | None = Field(None, ge=0, le=2, examples=[0.2])
    top_p: float | None = Field(None, gt=0, le=1, examples=[1.0])
    stop: list[StopSequence] | None = Field(None, max_length=4, examples=[["\n\n"]])
    fallbacks: list[Alias] | None = Field(None, max_length=10, examples=[["claude-haiku"]])
    cache: bool = Field(True, description="Use the response cache (never for conversations).")


class QueryUsage(Usage):
    source: str = Field(description="provider, cl100k_base or estimate.", examples=["provider"])


class ContextReport(BaseModel):
    history_messages: int = Field(
        description="Earlier messages sent with this prompt.", examples=[6]
    )
    dropped_messages: int = Field(
        description="Earlier messages left out to fit the window.", examples=[2]
    )
    summarized: bool = Field(
        description="Left-out messages were replaced by a summary.", examples=[False]
    )


class QueryResponse(BaseModel):
    id: str = Field(examples=["chatcmpl-3f2a..."])
    answer: str = Field(
        description="The answer after output filtering.", examples=["Returns are free for 30 days."]
    )
    finish_reason: str = Field(examples=["stop"])
    model: str = Field(examples=["gpt-4o-mini"])
    provider: str = Field(examples=["openai"])
    provider_model: str = Field(examples=["gpt-4o-mini-2024-07-18"])
    usage: QueryUsage
    tokenizer: str = Field(description="cl100k_base or estimate.", examples=["cl100k_base"])
    cost_usd: Decimal = Field(examples=["0.000123"])
    cache_hit: bool = Field(examples=[False])
    attempts: list[dict[str, Any]]
    safety: SafetyPair
    conversation_id: int | None = Field(None, examples=[3])
    context: ContextReport | None = None


# --- providers and models ------------------------------------------------------------


class ProviderCreate(_Model):
    name: Name = Field(description="Unique provider name.", examples=["openai"])
    kind: ProviderKind = Field(
        "openai", description="Wire format: openai (OpenAI-compatible) or anthropic."
    )
    base_url: Text = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=500,
        description="API root, e.g. https://api.openai.com/v1 or http://localhost:11434/v1.",
        # A loopback example: API fuzzers register their examples and then query them.
        examples=["http://127.0.0.1:11434/v1"],
    )
    api_key_env: str | None = Field(
        None,
        pattern=KEY_ENV_PATTERN,
        description="Environment variable holding the key (must start with BHIV_LLM_KEY_); never the key itself.",
        examples=["BHIV_LLM_KEY_OPENAI"],
    )
    timeout_seconds: float = Field(
        60.0, gt=0, le=600, description="Per-call timeout.", examples=[30]
    )
    max_retries: int = Field(
        2, ge=0, le=10, description="Retries on the same model before falling back."
    )
    enabled: bool = Field(True, description="Disabled providers are skipped.")


class ProviderUpdate(_Model):
    kind: ProviderKind | None = None
    base_url: Text | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=500)
    api_key_env: str | None = Field(None, pattern=KEY_ENV_PATTERN)
    timeout_seconds: float | None = Field(None, gt=0, le=600)
    max_retries: int | None = Field(None, ge=0, le=10)
    enabled: bool | None = None


class ProviderRead(_Read):
    name: str = Field(examples=["openai"])
    kind: str = Field(examples=["openai"])
    base_url: str = Field(examples=["http://127.0.0.1:11434/v1"])
    api_key_env: str | None = Field(examples=["BHIV_LLM_KEY_OPENAI"])
    api_key_configured: bool = Field(
        description="The named variable is set (its value is never shown)."
    )
    timeout_seconds: float = Field(examples=[30])
    max_retries: int = Field(examples=[2])
    enabled: bool
    source: str = Field(
        description="config (from BHIV_LLM_PROVIDERS, read-only here) or api.", examples=["api"]
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class ModelCreate(_Model):
    alias: Alias = Field(description="Name clients use.", examples=["gpt-4o-mini"])
    provider: Name = Field(description="A registered provider's name.", examples=["openai"])
    model: Text = Field(
        min_length=1,
        max_length=200,
        description="The provider's model name.",
        examples=["gpt-4o-mini-2024-07-18"],
    )
    input_price_per_1k: Price = Field(
        Decimal("0"), description="USD per 1000 prompt tokens.", examples=["0.00015"]
    )
    output_price_per_1k: Price = Field(
        Decimal("0"), description="USD per 1000 answer tokens.", examples=["0.0006"]
    )
    context_window: int = Field(
        8192, ge=256, le=10_000_000, description="Tokens the model accepts in all."
    )
    max_output_tokens: Tokens | None = Field(None, description="Most tokens the model generates.")
    tokenizer: Tokenizer = Field(
        "cl100k_base", description="How the service counts tokens for this model."
    )
    fallbacks: list[Alias] = Field(
        default_factory=list,
        max_length=10,
        description="Aliases tried, in order, when this one fails.",
    )
    enabled: bool = True


class ModelUpdate(_Model):
    provider: Name | None = None
    model: Text | None = Field(None, min_length=1, max_length=200)
    input_price_per_1k: Price | None = None
    output_price_per_1k: Price | None = None
    context_window: int | None = Field(None, ge=256, le=10_000_000)
    max_output_tokens: Tokens | None = None
    tokenizer: Tokenizer | None = None
    fallbacks: list[Alias] | None = Field(None, max_length=10)
    enabled: bool | None = None


class ModelRead(BaseModel):
    alias: str = Field(examples=["gpt-4o-mini"])
    provider: str = Field(examples=["openai"])
    model: str = Field(examples=["gpt-4o-mini-2024-07-18"])
    input_price_per_1k: Decimal = Field(examples=["0.00015"])
    output_price_per_1k: Decimal = Field(examples=["0.0006"])
    context_window: int = Field(examples=[128000])
    max_output_tokens: int | None = Field(examples=[16384])
    tokenizer: str = Field(description="Configured tokenizer.", examples=["cl100k_base"])
    tokenizer_in_use: str = Field(
        description="What counting actually uses (estimate if the tokenizer is missing).",
        examples=["cl100k_base"],
    )
    fallbacks: list[str] = Field(examples=[["claude-haiku"]])
    enabled: bool
    available: bool = Field(description="Enabled, and so is its provider.")
    source: str = Field(examples=["api"])
    created_at: dt.datetime
    updated_at: dt.datetime


class ModelList(BaseModel):
    items: list[ModelRead]
    total: int = Field(examples=[1])
    limit: int = Field(examples=[50])
    offset: int = Field(examples=[0])
    configured: bool = Field(description="At least one model can take queries.", examples=[True])
    hint: str | None = Field(None, description="What to configure when nothing is.")


# --- policies ------------------------------------------------------------------------


class PolicyPut(_Model):
    safety_action: SafetyAction = Field("redact", description="block, redact or flag findings.")
    blocklist: list[Term] = Field(default_factory=list, max_length=500, examples=[["project-x"]])
    injection_threshold: float = Field(
        0.5, ge=0, le=1, description="Injection score counted as a finding."
    )
    requests_per_minute: int | None = Field(
        None, ge=1, le=1_000_000, description="Unset: no limit."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, le=1_000_000_000, description="Unset: no limit."
    )
    monthly_budget_usd: Decimal | None = Field(
        None, ge=0, max_digits=14, decimal_places=6, description="Unset: no budget."
    )
    cache_enabled: bool = Field(True, description="Answer identical requests from the cache.")


class PolicyRead(_Read):
    subject: str = Field(
        description="The key's subject (e.g. apikey:partner-a), or default.",
        examples=["apikey:partner-a"],
    )
    safety_action: str
    blocklist: list[str]
    injection_threshold: float
    requests_per_minute: int | None
    tokens_per_minute: int | None
    monthly_budget_usd: Decimal | None
    cache_enabled: bool
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


class Quota(BaseModel):
    subject: str = Field(examples=["apikey:partner-a"])
    policy: str = Field(
        description="Whose policy applies: the subject, default, or settings.", examples=["default"]
    )
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_this_minute: int
    tokens_this_minute: int
    monthly_budget_usd: Decimal | None
    spent_this_month_usd: Decimal
    remaining_usd: Decimal | None


# --- conversations -------------------------------------------------------------------


class ConversationCreate(_Model):
    title: Text | None = Field(None, max_length=200, examples=["Returns policy"])
    model: Alias | None = Field(
        None, description="Default alias for this conversation.", examples=["gpt-4o-mini"]
    )
    system_prompt: Text | None = Field(
        None, max_length=MAX_TEXT, examples=["You are a support agent."]
    )
    context_strategy: ContextStrategy | None = Field(
        None,
        description="When history outgrows the window: truncate oldest turns, or summarize them.",
    )


class ConversationUpdate(_Model):
    title: Text | None = Field(None, max_length=200)
    model: Alias | None = None
    system_prompt: Text | None = Field(None, max_length=MAX_TEXT)
    context_strategy: ContextStrategy | None = None


class ConversationRead(BaseModel):
    id: int = Field(examples=[3])
    title: str | None
    model: str | None
    system_prompt: str | None
    context_strategy: str
    summary: str | None = Field(description="Summary of turns no longer sent in full.")
    message_count: int
    created_at: dt.datetime
    updated_at: dt.datetime


class MessageRead(_Read):
    id: int
    role: str = Field(examples=["user"])
    content: str
    tokens: int
    model_alias: str | None
    created_at: dt.datetime


# --- safety, usage, analytics --------------------------------------------------------


class SafetyCheckRequest(_Model):
    text: Text = Field(min_length=1, max_length=MAX_TEXT, examples=["Mail me at asha@example.com"])
    action: SafetyAction | None = Field(None, description="Default: the caller's policy.")
    check_injection: bool = Field(True, description="Also score prompt injection.")


class SafetyCheckResult(BaseModel):
    decision: str = Field(examples=["redacted"])
    reason: str
    score: float
    findings: list[dict[str, Any]]
    text: str = Field(description="The text as it would be sent (redacted if so).")


class DecisionRead(_Read):
    id: int
    request_id: str | None
    subject: str
    tenant: str
    direction: str
    decision: str
    policy_action: str
    reason: str
    score: float
    findings: list[dict[str, Any]]
    model_alias: str | None
    created_at: dt.datetime


class UsageRead(_Read):
    id: int
    request_id: str | None
    subject: str
    tenant: str
    endpoint: str
    model_alias: str | None
    provider: str | None
    stream: bool
    status: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    usage_source: str
    cost_usd: Decimal
    attempts: int
    latency_ms: int
    error: str | None
    created_at: dt.datetime


class UsageGroup(BaseModel):
    key: str | None = Field(description="The model, key, tenant or day.", examples=["gpt-4o-mini"])
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Decimal
    cache_hits: int
    errors: int
    blocked: int


class UsageAnalytics(BaseModel):
    group_by: str = Field(examples=["model"])
    since: dt.datetime | None
    until: dt.datetime | None
    rows: list[UsageGroup]
    totals: UsageGroup


class CacheStats(BaseModel):
    tenant: str | None
    entries: int
    hits: int
    ttl_seconds: int
