"""The OpenAI-compatible surface: ``POST /v1/chat/completions`` (whole or as
server-sent events) and ``GET /v1/models``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select

from bhiv.core.routing import service_router
from bhiv.llm.models import LlmModel
from bhiv.llm.pipeline import (
    Answer,
    ChatRequest,
    Prepared,
    QueryPipeline,
    StreamBroken,
    new_completion_id,
)
from bhiv.llm.providers.base import Delta
from bhiv.llm.routes.deps import CallerDep, EngineDep, SessionDep
from bhiv.llm.routing import Attempt, Route
from bhiv.llm.schemas import ChatCompletion, ChatCompletionRequest, ModelCard, ModelCardList
from bhiv.llm.tokens import message_text

router = service_router(tags=["chat"])

SAMPLING = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
)
PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Blocked by the safety policy, too long for the model, or refused by the provider."
    },
    402: {"description": "The key's monthly budget is used up."},
    404: {"description": "No model has this alias (errors names the field)."},
    429: {"description": "A rate limit was reached; Retry-After says when to retry."},
    502: {"description": "Every model in the route failed."},
    503: {
        "description": "No model is configured (the detail names the settings), or the route is disabled."
    },
    504: {"description": "Every model in the route timed out."},
}


def to_chat_request(body: ChatCompletionRequest) -> ChatRequest:
    params: dict[str, Any] = {k: getattr(body, k) for k in SAMPLING if getattr(body, k) is not None}
    if body.max_completion_tokens is not None and "max_tokens" not in params:
        params["max_tokens"] = body.max_completion_tokens
    messages = []
    for m in body.messages:
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": message_text(m.model_dump()),
        }
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    return ChatRequest(
        endpoint="chat.completions",
        model=body.model,
        messages=messages,
        params=params,
        fallbacks=body.fallbacks,
        stream=body.stream,
        use_cache=body.cache,
    )


def completion_body(answer: Answer) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.route.alias,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.total_tokens,
        },
        "bhiv": json.loads(json.dumps(answer.extension(), default=str)),
    }


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion (OpenAI-compatible)",
    description="Routes by alias with retries and fallbacks, filters input and output, caches identical "
    "requests per tenant, and accounts tokens and cost. With `stream: true` the answer comes as "
    "`text/event-stream` chunks (`chat.completion.chunk`) ending with `data: [DONE]`.",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest, engine: EngineDep, caller: CallerDep
) -> Any:
    prep = await engine.prepare(caller, to_chat_request(body))
    if not body.stream:
        answer = await engine.complete(prep)
        return JSONResponse(
            completion_body(answer), headers={**prep.rate_headers, **answer.headers()}
        )
    route, deltas, attempts = await engine.open_stream(prep)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    headers = {
        **prep.rate_headers,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-BHIV-Cache": "HIT" if prep.cached is not None else "MISS",
        "X-BHIV-Model": route.alias,
    }
    return StreamingResponse(
        _events(engine, prep, route, deltas, attempts, include_usage),
        media_type="text/event-stream",
        headers=headers,
    )


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, default=str)}\n\n"


async def _events(
    engine: QueryPipeline,
    prep: Prepared,
    route: Route,
    deltas: AsyncGenerator[Delta, None],
    attempts: list[Attempt],
    include_usage: bool,
) -> AsyncIterator[str]:
    cid, created = new_completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": route.alias,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    answer: Answer | None = None
    try:
        # aclosing: if the client leaves, relay() is closed now (and records
        # what was used), not whenever the garbage collector gets to it.
        async with contextlib.aclosing(engine.relay(prep, route, deltas, attempts)) as items:
            async for item in items:
                if isinstance(item, str):
                    yield chunk({"content": item})
                else:
                    answer = item
    except StreamBroken as exc:
        # Mid-stream failures cannot become an HTTP status any more; OpenAI
        # clients raise on an `error` event.
        yield _sse(
            {
                "error": {
                    "message": f"The provider failed during the stream: {exc}",
                    "type": "upstream_error",
                }
            }
        )
        return
    assert answer is not None
    yield chunk(
        {}, answer.finish_reason, bhiv=json.loads(json.dumps(answer.extension(), default=str))
    )
    if include_usage:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": route.alias,
                "choices": [],
                "usage": {
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": answer.completion_tokens,
                    "total_tokens": answer.total_tokens,
                },
            }
        )
    yield _sse("[DONE]")


@router.get(
    "/v1/models",
    response_model=ModelCardList,
    summary="Models that take queries (OpenAI-compatible)",
)
def list_v1_models(session: SessionDep) -> ModelCardList:
    rows = session.scalars(
        select(LlmModel).where(LlmModel.enabled.is_(True)).order_by(LlmModel.alias)
    )
    return ModelCardList(
        data=[
            ModelCard(id=m.alias, created=int(m.created_at.timestamp()), owned_by=m.provider.name)
            for m in rows
            if m.provider.enabled
        ]
    )
