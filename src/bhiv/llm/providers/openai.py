"""The OpenAI chat-completions wire format: OpenAI itself, vLLM, Ollama,
llama.cpp's server, LM Studio and anything else that speaks it.

``base_url`` ends where the OpenAI SDK's does (``https://api.openai.com/v1``,
``http://localhost:11434/v1``); requests go to ``{base_url}/chat/completions``.
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


def _headers(target: ProviderTarget) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = target.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _usage(data: Any) -> ProviderUsage | None:
    if not isinstance(data, dict):
        return None
    try:
        return ProviderUsage(int(data["prompt_tokens"]), int(data["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _url(target: ProviderTarget) -> str:
    return target.base_url.rstrip("/") + "/chat/completions"


class OpenAIAdapter:
    async def complete(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> Completion:
        body = {"model": target.model, "messages": messages, **params, "stream": False}
        data = await post_json(http, target, _url(target), body, _headers(target))
        try:
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                f"{target.provider} answered 200 without a chat completion", status=502
            ) from None
        return Completion(content=content, finish_reason=finish, usage=_usage(data.get("usage")))

    async def stream(
        self,
        http: httpx.AsyncClient,
        target: ProviderTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncGenerator[Delta, None]:
        body = {
            "model": target.model,
            "messages": messages,
            **params,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        finish: str | None = None
        usage: ProviderUsage | None = None
        async for chunk in sse_data(http, target, _url(target), body, _headers(target)):
            if not isinstance(chunk, dict):
                raise ProviderError(f"{target.provider} sent a malformed stream chunk", status=502)
            if "error" in chunk:
                raise status_error(target, 502, json.dumps(chunk).encode())
            usage = _usage(chunk.get("usage")) or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if text:
                    yield Delta(content=text)
        yield Delta(finish_reason=finish or "stop", usage=usage)
