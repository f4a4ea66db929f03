"""Sending one request upstream: instance choice, circuit breaker, retries.

Each attempt picks an available instance (round robin or least outstanding),
passes through the service's circuit breaker (purgatory) and sends the request
with httpx, streaming both ways. What may be retried, with exponential backoff
and jitter (tenacity), on another instance when there is one:

- a refused or timed-out *connection*, for any method: nothing reached the
  service, as long as the body can be sent again;
- 502/503/504 answers and connection resets, for idempotent methods only.

A read timeout is never retried (the route's time is already spent), and every
retry needs a token from the service's retry budget, so a struggling service
sees at most ``ratio`` more requests than clients send (plus a small floor)
instead of a retry storm.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from bhiv.core.errors import Problem
from bhiv.gateway.metrics import GatewayMetrics
from bhiv.gateway.registry import Instance, Registry, Upstream
from bhiv.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
GATEWAY_FAILURES = frozenset({502, 503, 504})
# A failed answer is read to be passed on if no retry succeeds; error bodies
# are small, and a larger one is cut here.
FAILED_BODY_LIMIT = 64 * 1024


class BodyTooLarge(Exception):
    """The client's body passed the gateway's limit while being streamed."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


class RequestBody:
    """A request body: bytes (can be sent again) or a stream (can be sent once)."""

    def __init__(self, data: bytes | None = None, stream: AsyncIterator[bytes] | None = None) -> None:
        self.data = data
        self._stream = stream
        self.started = False

    @property
    def replayable(self) -> bool:
        return self.data is not None or not self.started

    def content(self) -> bytes | AsyncIterator[bytes] | None:
        if self._stream is None:
            return self.data
        return self._once()

    async def _once(self) -> AsyncIterator[bytes]:
        self.started = True
        assert self._stream is not None
        async for chunk in self._stream:
            yield chunk


class RetryBudget:
    """Finagle-style: each request deposits ``ratio`` of a retry; a retry spends one."""

    def __init__(self, ratio: float, min_per_second: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = max(10.0, min_per_second * 10)
        self.balance = min(self.cap, min_per_second)
        self._stamp = time.monotonic()

    def deposit(self) -> None:
        now = time.monotonic()
        self.balance = min(self.cap, self.balance + self.ratio + (now - self._stamp) * self.min_per_second)
        self._stamp = now

    def withdraw(self) -> bool:
        if self.balance >= 1:
            self.balance -= 1
            return True
        return False


@dataclass
class Forwarded:
    """The upstream's answer, its body still to be read (or already read, when it failed)."""

    upstream: Upstream
    instance: Instance
    response: httpx.Response
    body: bytes | None = None  # set when the answer was read to decide on a retry
    _closed: bool = field(default=False, repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.body is not None:
            yield self.body
            return
        async for chunk in self.response.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.instance.outstanding -= 1
            await self.response.aclose()


class _AttemptFailed(Exception):
    """An attempt that failed in a way the gateway may retry or must report."""

    def __init__(self, reason: str, *, safe_for_any_method: bool, forwarded: Forwarded | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.safe_for_any_method = safe_for_any_method
        self.forwarded = forwarded


class Forwarder:
    def __init__(self, settings: GatewaySettings, registry: Registry, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._timeouts: dict[str, dict[str, float]] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.gateway_breaker_threshold,
            default_ttl=settings.gateway_breaker_reset_seconds,
            # The client's fault, not the service's.
            exclude=[BodyTooLarge, ClientGone],
        )
        self._breaker_by_name: dict[str, AsyncCircuitBreaker] = {}

    def _client(self, upstream: Upstream) -> httpx.AsyncClient:
        client = self._clients.get(upstream.name)
        if client is None:
            # One pool per service: a slow service cannot take every
            # connection from the others. No cookie jar (Set-Cookie belongs to
            # the client), no proxies from the environment, no redirects.
            limit = self._settings.gateway_max_connections
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=min(limit, 256)),
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                trust_env=False,
                follow_redirects=False,
            )
            self._clients[upstream.name] = client
            policy = upstream.policy
            self._timeouts[upstream.name] = httpx.Timeout(
                policy.timeout_seconds, connect=policy.connect_timeout_seconds, pool=policy.connect_timeout_seconds
            ).as_dict()
        return client

    def _budget(self, upstream: Upstream) -> RetryBudget:
        budget = self._budgets.get(upstream.name)
        if budget is None:
            budget = self._budgets[upstream.name] = RetryBudget(
                self._settings.gateway_retry_budget_ratio, self._settings.gateway_retry_budget_min_per_second
            )
        return budget

    async def _breaker(self, name: str) -> AsyncCircuitBreaker:
        breaker = self._breaker_by_name.get(name)
        if breaker is None:
            breaker = self._breaker_by_name[name] = await self._breakers.get_breaker(name)
        return breaker

    def breaker_state(self, name: str) -> dict[str, object]:
        breaker = self._breaker_by_name.get(name)
        if breaker is None:
            return {"state": "closed", "failures": 0}
        context = breaker.context
        out: dict[str, object] = {"state": context.state, "failures": context.failure_count or 0}
        if context.state == "opened" and context.opened_at is not None:
            out["reopens_in_seconds"] = round(max(0.0, context.opened_at + context.ttl - time.time()), 3)
        return out

    async def forward(
        self, upstream: Upstream, method: str, target: str, headers: list[tuple[bytes, bytes]], body: RequestBody
    ) -> Forwarded:
        """The upstream's answer (close it when done), or a 502/503/504 problem."""
        budget = self._budget(upstream)
        budget.deposit()
        tried: list[Instance] = []
        idempotent = method in IDEMPOTENT_METHODS

        def may_retry(exc: BaseException) -> bool:
            if not isinstance(exc, _AttemptFailed) or not body.replayable:
                return False
            if not (exc.safe_for_any_method or idempotent):
                return False
            if not budget.withdraw():
                self._metrics.retry_budget_exhausted.labels(upstream.name).inc()
                return False
            return True

        async def before_retry(state: RetryCallState) -> None:
            self._metrics.retries.labels(upstream.name).inc()
            failed = state.outcome.exception() if state.outcome else None
            if isinstance(failed, _AttemptFailed) and failed.forwarded is not None:
                await failed.forwarded.aclose()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(upstream.policy.retries + 1),
            # 25 ms, 50 ms, 100 ms ... capped at 250 ms, each plus up to 25 ms of jitter.
            wait=wait_exponential_jitter(initial=0.025, max=0.25, jitter=0.025),
            retry=retry_if_exception(may_retry),
            before_sleep=before_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(upstream, method, target, headers, body, tried)
        except _AttemptFailed as failed:
            if failed.forwarded is not None:
                return failed.forwarded  # the service's own 502/503/504, passed on as it is
            raise self._problem(upstream, failed.reason) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(
        self,
        upstream: Upstream,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody,
        tried: list[Instance],
    ) -> Forwarded:
        instance = upstream.pick(avoid=tried)
        if instance is None:
            raise Problem(
                503,
                f"The {upstream.name} service has no instance available right now.",
                kind="service-unavailable",
                headers={"Retry-After": "1"},
            )
        tried.append(instance)
        client = self._client(upstream)
        try:
            async with await self._breaker(upstream.name):
                return await self._send(upstream, instance, client, method, target, headers, body)
        except OpenedState:
            self._metrics.breaker_rejections.labels(upstream.name).inc()
            state = self.breaker_state(upstream.name)
            retry_after = max(1, round(float(state.get("reopens_in_seconds", 1))))  # type: ignore[arg-type]
            raise Problem(
                503,
                f"The {upstream.name} service is failing; requests are paused by its circuit breaker.",
                kind="circuit-open",
                headers={"Retry-After": str(retry_after)},
            ) from None

    async def _send(
        self,
        upstream: Upstream,
        instance: Instance,
        client: httpx.AsyncClient,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody,
    ) -> Forwarded:
        request = httpx.Request(
            method,
            instance.url + target,
            headers=headers,
            content=body.content(),
            extensions={"timeout": self._timeouts[upstream.name]},
        )
        instance.outstanding += 1
        started = time.perf_counter()
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            instance.outstanding -= 1
            outcome = "refused" if isinstance(exc, httpx.ConnectError) else "connect_timeout"
            self._count(upstream, instance, outcome)
            if isinstance(exc, httpx.ConnectError):
                self._registry.refused(instance, "connection refused")
            else:
                self._failure(upstream, instance, "connect timeout")
            raise _AttemptFailed(f"{outcome.replace('_', ' ')} at an instance", safe_for_any_method=True) from None
        except httpx.TimeoutException as exc:
            instance.outstanding -= 1
            self._count(upstream, instance, "timeout")
            self._failure(upstream, instance, "timeout")
            if isinstance(exc, httpx.PoolTimeout):
                raise Problem(
                    503, f"The {upstream.name} service has no free connection.", kind="service-unavailable"
                ) from None
            raise Problem(
                504,
                f"The {upstream.name} service did not answer within {upstream.policy.timeout_seconds:g}s.",
                kind="upstream-timeout",
            ) from None
        except (BodyTooLarge, ClientGone):
            instance.outstanding -= 1
            raise
        except httpx.TransportError as exc:
            instance.outstanding -= 1
            self._count(upstream, instance, "reset")
            self._failure(upstream, instance, f"connection error ({type(exc).__name__})")
            raise _AttemptFailed("the connection to an instance broke", safe_for_any_method=False) from None
        except BaseException:
            instance.outstanding -= 1
            raise
        self._metrics.upstream_latency.labels(upstream.name).observe(time.perf_counter() - started)
        self._count(upstream, instance, str(response.status_code))
        forwarded = Forwarded(upstream, instance, response)
        if response.status_code in GATEWAY_FAILURES:
            self._failure(upstream, instance, f"answered {response.status_code}")
            # Kept to pass on if no retry does better.
            forwarded.body = await _read_some(response)
            raise _AttemptFailed(
                f"an instance answered {response.status_code}", safe_for_any_method=False, forwarded=forwarded
            )
        self._registry.gateway_success(instance)
        return forwarded

    def _count(self, upstream: Upstream, instance: Instance, outcome: str) -> None:
        self._metrics.upstream_requests.labels(upstream.name, instance.url, outcome).inc()

    def _failure(self, upstream: Upstream, instance: Instance, error: str) -> None:
        settings = self._settings
        if self._registry.gateway_failure(
            instance, error, settings.gateway_eject_after_failures, settings.gateway_ejection_seconds
        ):
            self._metrics.ejections.labels(upstream.name, instance.url).inc()

    def _problem(self, upstream: Upstream, reason: str) -> Problem:
        if reason.startswith(("refused", "connect")):
            return Problem(
                503,
                f"The {upstream.name} service is unavailable: {reason}.",
                kind="service-unavailable",
                headers={"Retry-After": "1"},
            )
        return Problem(502, f"The {upstream.name} service failed: {reason}.", kind="bad-gateway")

    async def forget(self, upstream: Upstream) -> None:
        """Close the pool of a service that is no longer routed."""
        client = self._clients.pop(upstream.name, None)
        self._timeouts.pop(upstream.name, None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def _read_some(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            parts.append(chunk)
            size += len(chunk)
            if size >= FAILED_BODY_LIMIT:
                break
    except httpx.TransportError:
        pass
    return b"".join(parts)[:FAILED_BODY_LIMIT]
