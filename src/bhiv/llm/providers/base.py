"""What every provider adapter offers: one chat completion, whole or streamed,
and errors classified so the router knows whether to retry or fall back.

Adapters speak their provider's wire format and nothing else: no retries, no
fallbacks, no accounting (that is :mod:`bhiv.llm.routing`'s job).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

# Upstream statuses worth another try on the same model: the provider is busy
# or briefly broken, so the same request may well succeed in a moment.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# Statuses that say the request itself is wrong: another model would refuse it too.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


class ProviderError(Exception):
    """A call that did not produce an answer.

    ``retryable``: try the same model again (after a backoff). ``client_fault``:
    the request is at fault, so neither retrying nor falling back can help.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timeout: bool = False,
        circuit_open: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.timeout = timeout
        self.circuit_open = circuit_open

    @property
    def retryable(self) -> bool:
        if self.circuit_open:
            return False  # the model is paused; the next one in the route is tried at once
        return self.timeout or self.status is None or self.status in RETRYABLE_STATUSES

    @property
    def client_fault(self) -> bool:
        return self.status in CLIENT_FAULT_STATUSES


@dataclass(frozen=True)
class ProviderUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Completion:
    content: str
    finish_reason: str
    usage: ProviderUsage | None = None


@dataclass
class Delta:
    """One piece of a streamed answer; the last carries ``finish_reason`` and maybe usage."""

    content: str = ""
    finish_reason: str | None = None
    usage: ProviderUsage | None = None


@dataclass(frozen=True)
class ProviderTarget:
    """Where one call goes: the provider's endpoint and the upstream model name."""

    provider: str
    kind: str
    base_url: str
    api_key_env: str | None
    timeout_seconds: float
    model: str

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            # Said without the value (there is none) and without guessing one.
            raise ProviderError(
                f"provider {self.provider}: environment variable {self.api_key_env} is not set"
            )
        return key


class Adapter(Protocol):
    async def complete(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> Completion: ...

    def stream(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncGenerator[Delta, None]: ...


def transport_error(target: ProviderTarget, exc: Exception) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(
            f"{target.provider} timed out after {target.timeout_seconds:g}s", timeout=True
        )
    return ProviderError(f"{target.provider} unreachable ({type(exc).__name__})")


def status_error(target: ProviderTarget, status: int, body: bytes) -> ProviderError:
    return ProviderError(
        f"{target.provider} answered {status}: {upstream_message(body)}", status=status
    )


def upstream_message(body: bytes) -> str:
    """The provider's own error message, short; never the request or our headers."""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        text = str(msg if msg is not None else data)
    except ValueError:
        text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:300] or "no detail"


async def post_json(
    http: httpx.AsyncClient,
    target: ProviderTarget,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> Any:
    """POST a JSON body and return the JSON answer; every failure as a :class:`ProviderError`."""
    try:
        r = await http.post(url, json=body, headers=headers, timeout=target.timeout_seconds)
    except httpx.HTTPError as exc:
        raise transport_error(target, exc) from None
    if r.status_code >= 400:
        raise status_error(target, r.status_code, r.content)
    try:
        return r.json()
    except ValueError:
        raise ProviderError(
            f"{target.provider} answered 200 with a body that is not JSON", status=502
        ) from None


async def sse_data(
    http: httpx.AsyncClient,
    target: ProviderTarget,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> AsyncIterator[Any]:
    """POST a JSON body and yield each server-sent event's decoded ``data``, up to ``[DONE]``."""
    try:
        async with http.stream(
            "POST", url, json=body, headers=headers, timeout=target.timeout_seconds
        ) as r:
            if r.status_code >= 400:
                raise status_error(target, r.status_code, await r.aread())
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    yield json.loads(payload)
                except ValueError:
                    raise ProviderError(
                        f"{target.provider} sent a malformed stream event", status=502
                    ) from None
    except httpx.HTTPError as exc:
        raise transport_error(target, exc) from None
