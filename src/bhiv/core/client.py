"""The HTTP client services use to call each other.

Pooled connections, a timeout on every call, retries with exponential backoff
and jitter for idempotent methods only (tenacity), and a circuit breaker per
upstream (purgatory) so a dead dependency fails fast instead of piling up
waiting requests. The current request's ID and caller credentials travel with
every call.
"""

from __future__ import annotations

from typing import Any

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from bhiv.core.context import credentials_var, request_id_var
from bhiv.core.roles import IDEMPOTENT_METHODS


class UpstreamError(Exception):
    """The upstream answered 5xx (counted by the breaker, retried if idempotent)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        )
        self.response = response


class UpstreamUnavailable(Exception):
    """The upstream's circuit is open: calls fail fast until it recovers."""


class ServiceClient:
    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        breaker_threshold: int = 5,
        breaker_reset_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._attempts = attempts
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            transport=transport,
        )
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=breaker_threshold, default_ttl=breaker_reset_seconds
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; 4xx answers are returned, 5xx and transport errors raised."""
        method = method.upper()
        headers = httpx.Headers(kwargs.pop("headers", None))
        if (rid := request_id_var.get()) and "X-Request-ID" not in headers:
            headers["X-Request-ID"] = rid
        for name, value in (credentials_var.get() or {}).items():
            headers.setdefault(name, value)
        attempts = self._attempts if method in IDEMPOTENT_METHODS else 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            # 50 ms, 100 ms, 200 ms ... capped at 1 s, each plus up to 50 ms of jitter.
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            retry=retry_if_exception_type((httpx.TransportError, UpstreamError)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, headers, kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _once(
        self, method: str, path: str, headers: httpx.Headers, kwargs: dict[str, Any]
    ) -> httpx.Response:
        try:
            async with await self._breakers.get_breaker(self.name):
                response = await self._http.request(method, path, headers=headers, **kwargs)
                if response.status_code >= 500:
                    raise UpstreamError(response)
                return response
        except OpenedState:
            raise UpstreamUnavailable(
                f"{self.name} is failing; calls are paused by its circuit breaker"
            ) from None

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()
