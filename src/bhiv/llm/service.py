"""The LLM query service: a model registry over OpenAI-compatible and Anthropic
providers, routing with retries and fallbacks, caching, safety filtering,
conversations, and usage, cost, budgets and rate limits per key."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from bhiv import catalog
from bhiv.core import ServiceSpec
from bhiv.core import create_app as _create_app
from bhiv.core.background import background, repeat
from bhiv.llm import cache, limits, registry
from bhiv.llm.models import Base
from bhiv.llm.pipeline import QueryPipeline
from bhiv.llm.routes import catalog as catalog_routes
from bhiv.llm.routes import chat, insight, policies, query
from bhiv.llm.settings import LlmSettings

log = logging.getLogger("bhiv.llm")
PURGE_INTERVAL_SECONDS = 60.0


@contextlib.asynccontextmanager
async def engine_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Apply the configured registry, open the provider client, purge expired rows in the background."""
    settings: LlmSettings = app.state.settings
    db = app.state.db

    def configure() -> None:
        # Replicas starting together may race to insert the same entries; the
        # loser retries and finds them.
        for attempt in range(3):
            try:
                with db.session() as session:
                    registry.apply_configuration(session, settings)
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    await run_in_threadpool(configure)
    # One pooled client for every provider call; timeouts are set per call
    # from each provider's own setting.
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )
    app.state.llm = QueryPipeline(settings, db, http)

    def purge() -> None:
        with db.session() as session:
            expired = cache.purge_expired(session)
            windows = limits.purge_windows(session)
            session.commit()
        if expired or windows:
            log.info("purged %d expired cache entries and %d old rate windows", expired, windows)

    async def purge_forever(stop: asyncio.Event) -> None:
        step = functools.partial(run_in_threadpool, purge)
        await repeat(stop, PURGE_INTERVAL_SECONDS, step, what="purging expired rows")

    try:
        async with background("llm-purge", purge_forever, grace=0):
            yield
    finally:
        await http.aclose()


SPEC = ServiceSpec(
    name="llm-query",
    title="BHIV LLM Query",
    description="OpenAI-compatible chat completions and /query over registered providers and models, with "
    "fallbacks, caching, safety filtering, conversations, usage and cost tracking, budgets and rate limits.",
    settings_class=LlmSettings,
    routers=(chat.router, query.router, catalog_routes.router, policies.router, insight.router),
    metadata=Base.metadata,
    migrations="bhiv.llm:migrations",
    capabilities=catalog.get("llm-query").capabilities,
    openapi_tags=[
        {"name": "chat", "description": "OpenAI-compatible chat completions and model list."},
        {"name": "query", "description": "The service's own query endpoint and conversations."},
        {
            "name": "providers",
            "description": "Where models are served (keys referenced, never stored).",
        },
        {"name": "models", "description": "Aliases, prices, context windows and fallbacks."},
        {
            "name": "policies",
            "description": "Per-key safety action, blocklist, rate limits and budget.",
        },
        {"name": "usage", "description": "Tokens and cost per key, tenant and model."},
        {"name": "safety", "description": "Safety decisions and a dry-run checker."},
        {"name": "cache", "description": "The response cache."},
    ],
    lifespan_hooks=(engine_lifespan,),
)


def create_app(settings: LlmSettings | None = None) -> FastAPI:
    return _create_app(SPEC, settings)
