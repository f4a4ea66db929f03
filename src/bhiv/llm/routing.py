"""Calling models: retries with backoff on the same model, then fallbacks to
the next model in the route, for whole answers and for streams.

A stream can only fall back before its first token reaches the caller, so the
router opens each candidate stream and waits for its first piece; once one
arrives, that model is committed to and later failures end the stream.

A circuit breaker per model (provider and upstream name, in each replica) pauses
a model after consecutive failures, so during an outage requests go straight to
the fallbacks instead of waiting out retries first; after the pause one trial
call decides whether it closes again. Requests the provider refuses as malformed
do not count against it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from bhiv.llm.providers import ADAPTERS
from bhiv.llm.providers.base import Completion, Delta, ProviderError, ProviderTarget

T = TypeVar("T")
# Short first waits: a caller is waiting on the answer, and fallbacks exist
# for providers that stay down.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class Route:
    """One model a request may be served by, with what accounting needs to know."""

    alias: str
    target: ProviderTarget
    max_retries: int
    input_price_per_1k: Decimal
    output_price_per_1k: Decimal
    context_window: int
    max_output_tokens: int | None
    tokenizer: str


@dataclass
class Attempt:
    model: str
    provider: str
    outcome: str  # ok | error | timeout | skipped (circuit open)
    duration_ms: int
    status: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class UpstreamRejected(Exception):
    """A provider refused the request itself (400/413/422): no other model would take it."""

    def __init__(self, error: ProviderError, attempts: list[Attempt]) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


class AllRoutesFailed(Exception):
    def __init__(self, attempts: list[Attempt]) -> None:
        super().__init__("every model in the route failed")
        self.attempts = attempts

    @property
    def all_timeouts(self) -> bool:
        return all(a.outcome == "timeout" for a in self.attempts)


# What does not say anything about the model's health: the request was wrong,
# or the caller went away.
NOT_A_MODEL_FAILURE: list[Any] = [(ProviderError, lambda e: e.client_fault), asyncio.CancelledError]


@dataclass
class Router:
    http: httpx.AsyncClient
    breakers: AsyncCircuitBreakerFactory | None = None
    attempts: list[Attempt] = field(default_factory=list)

    async def _guarded(self, route: Route, call: Callable[[], Awaitable[T]]) -> T:
        if self.breakers is None:
            return await call()
        name = f"{route.target.provider}/{route.target.model}"
        try:
            async with await self.breakers.get_breaker(name, exclude=NOT_A_MODEL_FAILURE):
                return await call()
        except OpenedState:
            raise ProviderError(
                f"{route.alias} is paused after repeated failures", circuit_open=True
            ) from None

    async def _retrying(self, route: Route, call: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(route.max_retries + 1),
            wait=wait_exponential_jitter(initial=BACKOFF_INITIAL, max=BACKOFF_MAX),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                started = time.perf_counter()
                try:
                    result = await self._guarded(route, call)
                except ProviderError as exc:
                    outcome = (
                        "timeout" if exc.timeout else "skipped" if exc.circuit_open else "error"
                    )
                    self.attempts.append(
                        Attempt(
                            route.alias,
                            route.target.provider,
                            outcome,
                            _ms(started),
                            exc.status,
                            exc.message,
                        )
                    )
                    raise
                self.attempts.append(
                    Attempt(route.alias, route.target.provider, "ok", _ms(started))
                )
                return result
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _first_success(
        self, routes: list[Route], call: Callable[[Route], Awaitable[T]]
    ) -> tuple[Route, T]:
        for route in routes:
            try:
                return route, await self._retrying(route, functools.partial(call, route))
            except ProviderError as exc:
                if exc.client_fault:
                    raise UpstreamRejected(exc, self.attempts) from None
        raise AllRoutesFailed(self.attempts)

    async def complete(
        self, routes: list[Route], messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[Route, Completion]:
        async def call(route: Route) -> Completion:
            return await ADAPTERS[route.target.kind].complete(
                self.http, route.target, messages, params
            )

        return await self._first_success(routes, call)

    async def stream(
        self, routes: list[Route], messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[Route, AsyncGenerator[Delta, None]]:
        """The committed route and its whole stream, first piece included."""

        async def opened(route: Route) -> AsyncGenerator[Delta, None]:
            stream = ADAPTERS[route.target.kind].stream(self.http, route.target, messages, params)
            try:
                first = await anext(stream)
            except BaseException:
                await stream.aclose()
                raise
            return _prepend(first, stream)

        return await self._first_success(routes, opened)


async def _prepend(first: Delta, rest: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    try:
        yield first
        async for delta in rest:
            yield delta
    finally:
        await rest.aclose()


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
