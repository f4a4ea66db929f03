"""Anthropic's Messages API, for Claude models, translated to and from the
OpenAI shape the rest of the service speaks.

``base_url`` is the API root (``https://api.anthropic.com``); requests go to
``{base_url}/v1/messages``. System messages become the ``system`` field;
``max_tokens``, which Anthropic requires, defaults to the service's reserve.
Parameters Anthropic has no equivalent for (penalties, seed) are not sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from bhiv.llm.providers.base import (
    Completion,
    Delta,
    ProviderError,
    ProviderTarget,
    ProviderUsage,
    post_json,
    sse_data,
    status_error,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _headers(target: ProviderTarget) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION}
    key = target.api_key()
    if key:
        headers["x-api-key"] = key
    return headers


def _body(
    target: ProviderTarget, messages: list[dict[str, Any]], params: dict[str, Any], stream: bool
) -> dict[str, Any]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [
        {"role": "assistant" if m["role"] == "assistant" else "user", "content": m["content"]}
        for m in messages
        if m["role"] != "system"
    ]
    body: dict[str, Any] = {
        "model": target.model,
        "messages": turns,
        "max_tokens": params.get("max_tokens") or DEFAULT_MAX_TOKENS,
        "stream": stream,
    }
    if system:
        body["system"] = system
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if params.get(ours) is not None:
            body[theirs] = params[ours]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return body


def _url(target: ProviderTarget) -> str:
    return target.base_url.rstrip("/") + "/v1/messages"


class AnthropicAdapter:
    async def complete(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> Completion:
        body = _body(target, messages, params, stream=False)
        data = await post_json(http, target, _url(target), body, _headers(target))
        try:
            text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
            usage = data.get("usage") or {}
        except (KeyError, TypeError, AttributeError):
            raise ProviderError(
                f"{target.provider} answered 200 without a message", status=502
            ) from None
        return Completion(
            content=text,
            finish_reason=STOP_REASONS.get(data.get("stop_reason") or "", "stop"),
            usage=_usage(usage.get("input_tokens"), usage.get("output_tokens")),
        )

    async def stream(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncGenerator[Delta, None]:
        body = _body(target, messages, params, stream=True)
        input_tokens = output_tokens = None
        finish = "stop"
        async for event in sse_data(http, target, _url(target), body, _headers(target)):
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "message_start":
                input_tokens = ((event.get("message") or {}).get("usage") or {}).get("input_tokens")
            elif kind == "content_block_delta":
                text = (event.get("delta") or {}).get("text") or ""
                if text:
                    yield Delta(content=text)
            elif kind == "message_delta":
                finish = STOP_REASONS.get(
                    (event.get("delta") or {}).get("stop_reason") or "", finish
                )
                output_tokens = (event.get("usage") or {}).get("output_tokens", output_tokens)
            elif kind == "error":
                raise status_error(target, 502, json.dumps(event).encode())
        yield Delta(finish_reason=finish, usage=_usage(input_tokens, output_tokens))


def _usage(prompt: Any, completion: Any) -> ProviderUsage | None:
    if prompt is None or completion is None:
        return None
    return ProviderUsage(int(prompt), int(completion))
