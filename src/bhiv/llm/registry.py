"""The model registry: providers and aliases from configuration and the API,
resolved into the routes a request may take, and the policy of each caller.

Configuration is applied at every start: entries it declares are created or
brought back in line and marked ``source=config``; the API may not change them
(the configuration would undo it at the next start), only entries it created.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.core import Problem, utcnow
from bhiv.core.errors import field_problem
from bhiv.llm import safety
from bhiv.llm.models import KeyPolicy, LlmModel, Provider, Source
from bhiv.llm.providers.base import ProviderTarget
from bhiv.llm.routing import Route
from bhiv.llm.settings import LlmSettings

log = logging.getLogger("bhiv.llm.registry")

DEFAULT_POLICY = "default"
NO_MODEL_DETAIL = (
    "No language model is configured, and none ships with the platform. Set BHIV_LLM_PROVIDERS and "
    "BHIV_LLM_MODELS (JSON lists, applied at start), or register a provider with POST /providers and a "
    "model with POST /models (admin)."
)


def apply_configuration(session: Session, settings: LlmSettings) -> None:
    """Create or update the configured providers and models (one transaction)."""
    providers: dict[str, Provider] = {p.name: p for p in session.scalars(select(Provider))}
    for cfg in settings.llm_providers:
        row = providers.get(cfg.name) or Provider(name=cfg.name)
        if row.id is not None and row.source != Source.config:
            log.warning(
                "configuration takes over provider %s, which was created over the API", cfg.name
            )
        for attr in (
            "kind",
            "base_url",
            "api_key_env",
            "timeout_seconds",
            "max_retries",
            "enabled",
        ):
            setattr(row, attr, getattr(cfg, attr))
        row.source, row.updated_at = Source.config, utcnow()
        session.add(row)
        providers[cfg.name] = row
    session.flush()

    models = {m.alias: m for m in session.scalars(select(LlmModel))}
    for mcfg in settings.llm_models:
        provider = providers.get(mcfg.provider)
        if provider is None:
            raise ValueError(
                f"BHIV_LLM_MODELS: model {mcfg.alias!r} names provider {mcfg.provider!r}, "
                "which is neither configured nor registered"
            )
        model = models.get(mcfg.alias) or LlmModel(alias=mcfg.alias)
        if model.id is not None and model.source != Source.config:
            log.warning(
                "configuration takes over model %s, which was created over the API", mcfg.alias
            )
        model.provider_id, model.provider_model = provider.id, mcfg.model
        for attr in (
            "input_price_per_1k",
            "output_price_per_1k",
            "context_window",
            "max_output_tokens",
            "tokenizer",
            "fallbacks",
            "enabled",
        ):
            setattr(model, attr, getattr(mcfg, attr))
        model.source, model.updated_at = Source.config, utcnow()
        session.add(model)
    session.commit()


def refuse_if_configured(row: Provider | LlmModel, what: str, setting: str) -> None:
    if row.source == Source.config:
        raise Problem(
            409,
            f"{what} is managed by configuration; change {setting} and restart instead.",
            kind="managed-by-configuration",
            extra={"setting": setting},
        )


def to_route(model: LlmModel) -> Route:
    p = model.provider
    return Route(
        alias=model.alias,
        target=ProviderTarget(
            provider=p.name,
            kind=p.kind,
            base_url=p.base_url,
            api_key_env=p.api_key_env,
            timeout_seconds=p.timeout_seconds,
            model=model.provider_model,
        ),
        max_retries=p.max_retries,
        input_price_per_1k=model.input_price_per_1k,
        output_price_per_1k=model.output_price_per_1k,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        tokenizer=model.tokenizer,
    )


def _usable(model: LlmModel) -> bool:
    return model.enabled and model.provider.enabled


def resolve_routes(
    session: Session,
    settings: LlmSettings,
    alias: str | None,
    fallbacks: Sequence[str] | None,
    *,
    field: str = "model",
) -> list[Route]:
    """The models to try, in order: the alias, then its (or the request's) fallbacks.

    503 when nothing is configured at all (saying what to set), 404 naming the
    field for an unknown alias, 503 when every model in the route is disabled.
    """
    models = {m.alias: m for m in session.scalars(select(LlmModel))}
    if not any(_usable(m) for m in models.values()):
        raise Problem(
            503,
            NO_MODEL_DETAIL,
            kind="no-model-configured",
            extra={"settings": ["BHIV_LLM_PROVIDERS", "BHIV_LLM_MODELS"]},
        )
    if alias is None:
        alias = settings.llm_default_model
        if alias is None or alias not in models:
            alias = min((m for m in models.values() if _usable(m)), key=lambda m: m.id).alias
    primary = models.get(alias)
    if primary is None:
        raise _unknown_model(field, alias, models)
    chain = [alias, *(fallbacks if fallbacks is not None else primary.fallbacks or [])]
    for i, name in enumerate(chain[1:]):
        if name not in models:
            raise _unknown_model(f"fallbacks.{i}" if fallbacks is not None else field, name, models)
    seen: set[str] = set()
    routes = []
    for name in chain:
        if name not in seen and _usable(models[name]):
            routes.append(to_route(models[name]))
        seen.add(name)
    if not routes:
        raise Problem(503, f"Model {alias} and its fallbacks are disabled.", kind="model-disabled")
    return routes


def _unknown_model(field: str, alias: str, models: dict[str, LlmModel]) -> Problem:
    known = ", ".join(sorted(models)) or "none"
    problem = field_problem(
        field, f"no model has alias '{alias}'; known aliases: {known}", status=404
    )
    problem.kind = "model-not-found"
    return problem


def policy_row(session: Session, subject: str) -> KeyPolicy | None:
    rows = {
        p.subject: p
        for p in session.scalars(
            select(KeyPolicy).where(KeyPolicy.subject.in_([subject, DEFAULT_POLICY]))
        )
    }
    return rows.get(subject) or rows.get(DEFAULT_POLICY)


def effective_policy(session: Session, settings: LlmSettings, subject: str) -> dict[str, Any]:
    """The caller's policy as plain values: its own row, else ``default``, else settings."""
    row = policy_row(session, subject)
    if row is not None:
        return {
            "subject": row.subject,
            "safety_action": row.safety_action,
            "blocklist": list(row.blocklist or []),
            "injection_threshold": row.injection_threshold,
            "requests_per_minute": row.requests_per_minute,
            "tokens_per_minute": row.tokens_per_minute,
            "monthly_budget_usd": row.monthly_budget_usd,
            "cache_enabled": row.cache_enabled,
        }
    return settings_policy(settings)


def settings_policy(settings: LlmSettings) -> dict[str, Any]:
    """The policy the settings define, for callers with no policy row and no ``default`` row."""
    return {
        "subject": "settings",
        "safety_action": settings.llm_safety_action,
        "blocklist": list(settings.llm_blocklist),
        "injection_threshold": settings.llm_injection_threshold,
        "requests_per_minute": settings.llm_requests_per_minute,
        "tokens_per_minute": settings.llm_tokens_per_minute,
        "monthly_budget_usd": settings.llm_monthly_budget_usd,
        "cache_enabled": True,
    }


def safety_policy(policy: dict[str, Any]) -> safety.Policy:
    return safety.Policy(
        action=policy["safety_action"],
        blocklist=tuple(policy["blocklist"]),
        injection_threshold=policy["injection_threshold"],
    )
