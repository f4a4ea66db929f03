"""The app factory: one FastAPI app per service with the whole framework wired in."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import MetaData
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from bhiv import __version__
from bhiv.core import health, migrations, tracing
from bhiv.core.auth import Authenticator, authorize_by_method
from bhiv.core.db import Database
from bhiv.core.errors import ProblemDetail, install_problem_handlers
from bhiv.core.metrics import HttpMetrics
from bhiv.core.middleware import (
    BodyLimitMiddleware,
    LoadShedMiddleware,
    PeerMiddleware,
    RequestContextMiddleware,
)
from bhiv.core.settings import ServiceSettings

log = logging.getLogger("bhiv.app")

# Run alongside the app for its lifetime, e.g. a background worker.
LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[Any]]
# Awaited by /health/ready; raising means "not ready", with the exception's text as the reason.
ReadinessCheck = Callable[[FastAPI], Awaitable[None]]

_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ProblemDetail,
        "content": {"application/problem+json": {}},
        "description": text,
    }
    for status, text in {
        400: "The body could not be read (e.g. not UTF-8).",
        401: "No valid credential.",
        403: "The caller's roles do not allow this.",
        404: "A resource named in the path does not exist.",
        413: "The body is larger than the service accepts.",
        422: "The request is malformed; `errors` names each bad field.",
    }.items()
}


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the framework needs to know about one service."""

    name: str
    title: str
    description: str
    settings_class: type[ServiceSettings]
    routers: Sequence[APIRouter]
    # A service without a database (e.g. the gateway) leaves both unset: no
    # engine is created, no migrations run, and readiness rests on its
    # readiness_checks alone.
    metadata: MetaData | None = None
    migrations: str | None = None  # Alembic script location, "package:folder"
    capabilities: tuple[str, ...] = ()
    openapi_tags: list[dict[str, Any]] = field(default_factory=list)
    lifespan_hooks: Sequence[LifespanHook] = ()
    readiness_checks: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    # Path prefixes whose handlers read the body as a stream and enforce their
    # own size limit; the framework's limit would otherwise buffer chunked bodies.
    streaming_paths: tuple[str, ...] = ()
    # Response headers browsers may read cross-origin, besides X-Request-ID.
    cors_expose_headers: tuple[str, ...] = ()
    version: str = __version__

    @property
    def has_database(self) -> bool:
        return self.migrations is not None


def _migrate_when_reachable(spec: ServiceSpec, settings: ServiceSettings) -> None:
    """Apply the migrations, waiting for a database that does not answer yet.

    On Kubernetes a service's pod may start before its database does (a fresh
    install, every pod deleted at once) or before its role exists (the chart
    provisions the bundled PostgreSQL in a hook). Waiting here, within the pod's
    startup probe, beats a crash loop whose back-off delays recovery by minutes.
    """

    def waiting(state: Any) -> None:
        # The driver's message names host and reason; never the URL's password.
        error = state.outcome.exception()
        kind = type(getattr(error, "orig", error)).__name__
        log.warning("database not reachable yet (%s); retrying", kind)

    for attempt in Retrying(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_delay(settings.database_wait_seconds),
        wait=wait_exponential(multiplier=0.5, max=5),
        before_sleep=waiting,
        reraise=True,
    ):
        with attempt:
            assert spec.migrations is not None  # only services with a database come here
            migrations.upgrade(spec.name, spec.migrations, settings.sqlalchemy_url())


def prepare(app: FastAPI) -> None:
    """What a service does before serving that needs no other service: its migrations
    and its OpenAPI document. The lifespan does it unless it was done already, which
    `bhiv serve --after` does while the services it starts after come up."""
    if getattr(app.state, "prepared", False):
        return
    spec: ServiceSpec = app.state.spec
    settings: ServiceSettings = app.state.settings
    if spec.has_database and settings.migrate_on_startup:
        _migrate_when_reachable(spec, settings)
    # Built once now: generating it stalls the event loop for a moment, and the
    # gateway reads it soon after start (public operations, the aggregated
    # document), which must not make the health probes time out.
    app.openapi()
    app.state.prepared = True


def create_app(spec: ServiceSpec, settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or spec.settings_class()
    # Before the database engine and any HTTP client exist: tracing patches their constructors.
    tracing.setup(spec.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(prepare, app)
        # Blocking handlers run in anyio's thread pool; more threads than
        # pooled connections would only queue on the pool, and every extra
        # thread adds GIL contention.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        app.state.started_monotonic = time.monotonic()
        async with AsyncExitStack() as stack:
            for hook in spec.lifespan_hooks:
                await stack.enter_async_context(hook(app))
            log.info(
                "%s %s listening on %s:%s", spec.name, spec.version, settings.host, settings.port
            )
            yield
        if app.state.db is not None:
            app.state.db.dispose()

    app = FastAPI(
        title=spec.title,
        description=spec.description,
        version=spec.version,
        openapi_tags=[
            *spec.openapi_tags,
            {"name": "platform", "description": "Health, info and metrics."},
        ],
        lifespan=lifespan,
    )
    app.state.spec = spec
    app.state.settings = settings
    app.state.db = (
        Database(
            settings.sqlalchemy_url(),
            pool_size=settings.worker_threads,
            max_connections=settings.max_concurrency,
        )
        if spec.has_database
        else None
    )
    app.state.authenticator = Authenticator(settings)
    app.state.metrics = HttpMetrics(spec.name, spec.version)
    app.state.started_monotonic = time.monotonic()

    install_problem_handlers(app)
    app.include_router(health.router)
    for router in spec.routers:
        app.include_router(
            router, dependencies=[Depends(authorize_by_method)], responses=_PROBLEM_RESPONSES
        )

    # Added innermost first: CORS answers preflights before the body limit,
    # and the request context wraps everything so every answer has an ID.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, exempt_paths=spec.streaming_paths
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", *spec.cors_expose_headers],
        )
    # Inside the request context, so a shed request still has an ID and a log line.
    app.add_middleware(
        LoadShedMiddleware,
        limit=settings.max_concurrency,
        queue=settings.max_queued_requests,
        wait=settings.queue_timeout_seconds,
        exempt_paths=("/health", "/health/ready"),
    )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    # Outermost: the client's address (uvicorn's middleware: the rightmost
    # X-Forwarded-For entry not a trusted proxy) is settled before anything
    # reads it (logs, rate limits), and only from the configured proxies.
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    app.add_middleware(PeerMiddleware)
    # Wraps the whole stack, so logs and problem bodies written inside see the server span.
    tracing.instrument_app(app)
    return app
