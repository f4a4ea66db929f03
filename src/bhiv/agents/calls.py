"""Outbound calls the engine makes: BHIV services (steps, service agents), the
LLM service (LLM agents) and configured URLs (HTTP agents)."""

from __future__ import annotations

from typing import Any

import httpx

from bhiv.agents.settings import AgentsSettings
from bhiv.core.client import ServiceClient, UpstreamError, UpstreamUnavailable
from bhiv.core.service_auth import service_headers

# Statuses worth another attempt: the request may succeed later as it is.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


class CallFailed(Exception):
    """A call did not succeed; ``retryable`` says whether trying again may help."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, problem: Any = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.problem = problem

    @property
    def already_exists(self) -> bool:
        """A 409 that says the resource exists (bhiv.core's unique-field problem), not any
        other conflict such as a stock shortage or an illegal transition."""
        errors = self.problem.get("errors") if isinstance(self.problem, dict) else None
        return self.status == 409 and any(
            isinstance(e, dict) and e.get("type") == "unique" for e in errors or ()
        )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body.get("title") or body)[:300]
    return str(body)[:300]


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


class ServiceCaller:
    """One pooled client per BHIV service, plus one for HTTP agents."""

    def __init__(self, settings: AgentsSettings) -> None:
        self.settings = settings
        # One attempt per call: the step's retry policy is the only retry loop,
        # so attempts are counted (and persisted) in one place.
        self.clients = {
            name: ServiceClient(name, url, timeout=300.0, attempts=1)
            for name, url in settings.agents_service_urls.items()
        }
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(300.0))

    def headers(self) -> dict[str, str]:
        """Background work has no caller: it speaks for the service itself."""
        return service_headers(self.settings, api_key=self.settings.agents_service_api_key)

    async def service(
        self, service: str, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> Any:
        client = self.clients.get(service)
        if client is None:
            raise CallFailed(f"no URL configured for service {service!r}", retryable=False)
        kwargs: dict[str, Any] = {"headers": self.headers()}
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        if body is not None:
            kwargs["json"] = body
        try:
            response = await client.request(method, path, **kwargs)
        except UpstreamError as exc:
            r = exc.response
            raise CallFailed(
                f"{service} answered {r.status_code}: {_detail(r)}",
                retryable=True,
                status=r.status_code,
            ) from None
        except UpstreamUnavailable as exc:
            raise CallFailed(str(exc), retryable=True) from None
        except httpx.HTTPError as exc:
            raise CallFailed(
                f"{service} unreachable: {type(exc).__name__}", retryable=True
            ) from None
        if response.status_code >= 400:
            raise CallFailed(
                f"{service} answered {response.status_code}: {_detail(response)}",
                retryable=response.status_code in RETRYABLE_STATUSES,
                status=response.status_code,
                problem=_body(response),
            )
        return _body(response)

    async def url(self, url: str, payload: Any) -> Any:
        try:
            response = await self.http.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise CallFailed(f"{url} unreachable: {type(exc).__name__}", retryable=True) from None
        if response.status_code >= 400:
            raise CallFailed(
                f"{url} answered {response.status_code}: {_detail(response)}",
                retryable=response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES,
                status=response.status_code,
            )
        return _body(response)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        await self.http.aclose()
