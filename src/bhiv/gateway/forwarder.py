"""Sending one request upstream: instance choice, circuit breaker, retries.

Each attempt picks an available instance (round robin or least outstanding),
passes through the service's circuit breaker (purgatory) and sends the request
with aiohttp, streaming both ways. (aiohttp rather than httpx, the platform's
usual client, on this one path: measured here, httpx spends 0.6-1.4 ms of CPU
per proxied request in its connection pool against aiohttp's 0.08 ms, which
alone capped the gateway below a tenth of the upstream's throughput.) What may
be retried, with exponential backoff and jitter (tenacity), on another instance
when there is one:

- a refused or timed-out *connection*, for any method: nothing reached the
  service, as long as the body can be sent again;
- 502/503/504 answers and connection resets, for idempotent methods only.

Passive ejection and the circuit breaker count only the instance's own faults:
transport failures (refused, timed out, reset) and 502/503/504 answers that are
not the service's problem+json. A service answering 502/503 with a problem is
reporting *its* dependency's failure (llm-query's model provider, say): passed
on, retried like any 502/503, but never held against the instance, or one
caller with a broken model could take the service away from everyone. An
answered failure also never ejects the last available instance of a service.

A read timeout is never retried (the route's time is already spent), and every
retry needs a token from the service's retry budget, so a struggling service
sees at most ``ratio`` more requests than clients send (plus a small floor)
instead of a retry storm.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from yarl import URL

from bhiv.core.errors import PROBLEM_JSON, Problem
from bhiv.core.roles import IDEMPOTENT_METHODS
from bhiv.gateway.metrics import GatewayMetrics
from bhiv.gateway.registry import Instance, Registry, Upstream
from bhiv.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

GATEWAY_FAILURES = frozenset({502, 503, 504})
# A failed answer is read to be passed on if no retry succeeds; error bodies
# are small, and a larger one is cut here.
FAILED_BODY_LIMIT = 64 * 1024
FIRST_RETRY_DELAY = 0.025
RETRY_JITTER = 0.025


class BodyTooLarge(Exception):
    """The client's body passed the gateway's limit while being streamed."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


class RequestBody:
    """A request body: bytes (can be sent again) or a stream (can be sent once)."""

    def __init__(
        self, data: bytes | None = None, stream: AsyncIterator[bytes] | None = None
    ) -> None:
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
        self.balance = min(
            self.cap, self.balance + self.ratio + (now - self._stamp) * self.min_per_second
        )
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
    response: aiohttp.ClientResponse
    body: bytes | None = None  # set when the answer was read to decide on a retry
    _closed: bool = field(default=False, repr=False)

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self.response.raw_headers

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.body is not None:
            yield self.body
            return
        async for chunk in self.response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.instance.outstanding -= 1
            # Back to the pool when the body was read to the end, closed otherwise.
            self.response.release()


class _AttemptFailed(Exception):
    """An attempt that failed in a way the gateway may retry or must report."""

    def __init__(
        self,
        reason: str,
        *,
        safe_for_any_method: bool,
        forwarded: Forwarded | None = None,
        instance_fault: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.safe_for_any_method = safe_for_any_method
        self.forwarded = forwarded
        # False for the service's own problem answer: not counted by the breaker.
        self.instance_fault = instance_fault


class Forwarder:
    def __init__(
        self, settings: GatewaySettings, registry: Registry, metrics: GatewayMetrics
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._clients: dict[str, aiohttp.ClientSession] = {}
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.gateway_breaker_threshold,
            default_ttl=settings.gateway_breaker_reset_seconds,
            # The client's fault, not the service's; nor the service's own problem answers.
            exclude=[
                BodyTooLarge,
                ClientGone,
                (_AttemptFailed, lambda exc: not exc.instance_fault),
            ],
        )
        self._breaker_by_name: dict[str, AsyncCircuitBreaker] = {}

    def _client(self, upstream: Upstream) -> aiohttp.ClientSession:
        client = self._clients.get(upstream.name)
        if client is None:
            # One pool per service: a slow service cannot take every
            # connection from the others. Bodies pass as they are (no
            # decompression), no cookie jar (Set-Cookie belongs to the client),
            # and no header the client did not send.
            connector = aiohttp.TCPConnector(
                limit=self._settings.gateway_max_connections,
                limit_per_host=0,
                ttl_dns_cache=10,
                # Shorter than uvicorn's 5 s keep-alive, so the gateway drops an
                # idle connection before the service does, not while reusing it.
                keepalive_timeout=4,
            )
            client = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
            )
            self._clients[upstream.name] = client
            policy = upstream.policy
            self._timeouts[upstream.name] = aiohttp.ClientTimeout(
                total=None,
                connect=policy.connect_timeout_seconds,
                sock_connect=policy.connect_timeout_seconds,
                sock_read=policy.timeout_seconds,
            )
        return client

    def _budget(self, upstream: Upstream) -> RetryBudget:
        budget = self._budgets.get(upstream.name)
        if budget is None:
            budget = self._budgets[upstream.name] = RetryBudget(
                self._settings.gateway_retry_budget_ratio,
                self._settings.gateway_retry_budget_min_per_second,
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
            out["reopens_in_seconds"] = round(
                max(0.0, context.opened_at + context.ttl - time.time()), 3
            )
        return out

    async def forward(
        self,
        upstream: Upstream,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody,
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

        async def before_retry(failed: BaseException | None) -> None:
            self._metrics.retries.labels(upstream.name).inc()
            if isinstance(failed, _AttemptFailed) and failed.forwarded is not None:
                await failed.forwarded.aclose()

        async def before_next(state: RetryCallState) -> None:
            await before_retry(state.outcome.exception() if state.outcome else None)

        try:
            # The first attempt runs on its own: most requests need no more,
            # and setting up tenacity for each would cost every request.
            try:
                return await self._attempt(upstream, method, target, headers, body, tried)
            except _AttemptFailed as failed:
                if upstream.policy.retries == 0 or not may_retry(failed):
                    raise
                await before_retry(failed)
                await asyncio.sleep(FIRST_RETRY_DELAY + random.uniform(0, RETRY_JITTER))  # noqa: S311
            retrying = AsyncRetrying(
                stop=stop_after_attempt(upstream.policy.retries),
                # Then 50 ms, 100 ms ... capped at 250 ms, each plus up to 25 ms of jitter.
                wait=wait_exponential_jitter(
                    initial=2 * FIRST_RETRY_DELAY, max=0.25, jitter=RETRY_JITTER
                ),
                retry=retry_if_exception(may_retry),
                before_sleep=before_next,
                reraise=True,
            )
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
        client: aiohttp.ClientSession,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody,
    ) -> Forwarded:
        instance.outstanding += 1
        started = time.perf_counter()
        try:
            response = await client.request(
                method,
                # Encoded: the path goes on exactly as the client sent it.
                URL(instance.url + target, encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body.content(),
                timeout=self._timeouts[upstream.name],
                allow_redirects=False,
            )
        except BaseException as exc:
            instance.outstanding -= 1
            cause = _client_fault(exc)
            if cause is not None:
                raise cause from None
            if isinstance(exc, aiohttp.ClientConnectorError):
                self._count(upstream, instance, "refused")
                self._registry.refused(instance, "connection refused")
                raise _AttemptFailed("refused at an instance", safe_for_any_method=True) from None
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                self._count(upstream, instance, "connect_timeout")
                self._failure(upstream, instance, "connect timeout")
                raise _AttemptFailed(
                    "connect timeout at an instance", safe_for_any_method=True
                ) from None
            if isinstance(exc, asyncio.TimeoutError):
                self._count(upstream, instance, "timeout")
                self._failure(upstream, instance, "timeout")
                raise Problem(
                    504,
                    f"The {upstream.name} service did not answer within {upstream.policy.timeout_seconds:g}s.",
                    kind="upstream-timeout",
                ) from None
            if isinstance(exc, aiohttp.ClientError):
                self._count(upstream, instance, "reset")
                self._failure(upstream, instance, f"connection error ({type(exc).__name__})")
                raise _AttemptFailed(
                    "the connection to an instance broke", safe_for_any_method=False
                ) from None
            raise
        self._metrics.upstream_latency.labels(upstream.name).observe(time.perf_counter() - started)
        self._count(upstream, instance, str(response.status))
        forwarded = Forwarded(upstream, instance, response)
        if response.status in GATEWAY_FAILURES:
            # A problem+json answer is the service reporting a failure behind it.
            fault = response.content_type != PROBLEM_JSON
            if fault:
                self._failure(upstream, instance, f"answered {response.status}", answered=True)
            else:
                self._registry.gateway_success(instance)
            # Kept to pass on if no retry does better.
            forwarded.body = await _read_some(response)
            raise _AttemptFailed(
                f"an instance answered {response.status}",
                safe_for_any_method=False,
                forwarded=forwarded,
                instance_fault=fault,
            )
        self._registry.gateway_success(instance)
        return forwarded

    def _count(self, upstream: Upstream, instance: Instance, outcome: str) -> None:
        self._metrics.upstream_requests.labels(upstream.name, instance.url, outcome).inc()

    def _failure(
        self, upstream: Upstream, instance: Instance, error: str, *, answered: bool = False
    ) -> None:
        settings = self._settings
        # An instance that answers is alive: it is never ejected when it is the last one.
        keep = answered and not any(
            i is not instance and i.available(time.monotonic()) for i in upstream.instances
        )
        if self._registry.gateway_failure(
            instance,
            error,
            settings.gateway_eject_after_failures,
            settings.gateway_ejection_seconds,
            eject=not keep,
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
            await client.close()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _client_fault(exc: BaseException) -> BaseException | None:
    """The client's own failure (body too large, gone) behind an aiohttp error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BodyTooLarge | ClientGone):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_any():
            parts.append(chunk)
            size += len(chunk)
            if size >= FAILED_BODY_LIMIT:
                break
    except aiohttp.ClientError:
        pass
    return b"".join(parts)[:FAILED_BODY_LIMIT]
