"""A scriptable language-model server for tests: real HTTP on 127.0.0.1.

It speaks OpenAI's chat-completions API (``POST /v1/chat/completions``, whole or
as server-sent events, and ``GET /v1/models``) and Anthropic's Messages API
(``POST /v1/messages``), so a service under test calls it exactly as it would
call OpenAI, vLLM, Ollama or Anthropic. It runs in a thread of the test process,
so tests script it directly while the service runs in its own process.

Usage::

    with FakeOpenAI(api_key="sk-test") as fake:
        fake.script("gpt-x", Fail(503), Reply("hello"))   # next two calls, in order
        fake.default("slow", Reply(delay=5))             # every call once the queue is empty
        ...point the service at fake.base_url ("http://127.0.0.1:PORT/v1")...
        assert fake.calls_for("gpt-x")[-1].body["messages"][-1]["content"] == "hi"

Behaviour per model name (the ``model`` field of each request):

- a queue of steps set with :meth:`FakeOpenAI.script`, consumed one per request;
- once it is empty, the step set with :meth:`FakeOpenAI.default` (else ``Reply()``).

Steps:

- :class:`Reply`: answer with ``text`` (a string, a function of the request's
  messages, or None for ``"echo: <last user message>"``), after ``delay``
  seconds; streams send one chunk per word, ``chunk_delay`` apart, and
  ``break_after=N`` drops the connection after N content chunks.
- :class:`Fail`: answer ``status`` with an OpenAI-style error body, after ``delay``.

Token usage is deterministic: prompt tokens are the words of every message plus
one per message, completion tokens the words of the answer; ``Reply(usage=False)``
leaves ``usage`` out (as some OpenAI-compatible servers do).

When ``api_key`` is given, requests without it (``Authorization: Bearer`` or
``x-api-key``) get 401. Every request is recorded in :attr:`FakeOpenAI.calls`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.support.app_thread import AppThread
from tests.support.net import free_port

TextSource = str | Callable[[list[dict[str, Any]]], str] | None


@dataclass(frozen=True)
class Reply:
    text: TextSource = None
    delay: float = 0.0
    usage: bool = True
    finish_reason: str = "stop"
    chunk_delay: float = 0.0
    break_after: int | None = None


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "injected failure"
    delay: float = 0.0


Step = Reply | Fail


@dataclass
class Call:
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def echo(messages: list[dict[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return "echo: " + (_text(last_user.get("content")) if last_user else "")


def prompt_tokens(messages: list[dict[str, Any]], system: str = "") -> int:
    return sum(len(_text(m.get("content")).split()) + 1 for m in messages) + len(system.split())


def completion_tokens(text: str) -> int:
    return len(text.split())


def words(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text) or [text]


class FakeOpenAI:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.port = free_port()
        self.calls: list[Call] = []
        self._queues: dict[str, deque[Step]] = {}
        self._defaults: dict[str, Step] = {}
        self._lock = threading.Lock()
        self._runner: AppThread | None = None

    # --- scripting ----------------------------------------------------------------

    def script(self, model: str, *steps: Step) -> FakeOpenAI:
        """Queue steps for ``model``'s next requests, after any already queued."""
        with self._lock:
            self._queues.setdefault(model, deque()).extend(steps)
        return self

    def default(self, model: str, step: Step) -> FakeOpenAI:
        """What ``model`` does once its queue is empty."""
        with self._lock:
            self._defaults[model] = step
        return self

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._defaults.clear()
            self.calls.clear()

    def calls_for(self, model: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.model == model]

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _next(self, model: str) -> Step:
        with self._lock:
            queue = self._queues.get(model)
            if queue:
                return queue.popleft()
            return self._defaults.get(model, Reply())

    # --- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (what OpenAI SDKs call ``base_url``)."""
        return f"{self.url}/v1"

    def start(self) -> FakeOpenAI:
        self._runner = AppThread(self._app(), self.port, "fake-openai").start()
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- the HTTP app ---------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        bearer = request.headers.get("authorization", "")
        return (
            bearer == f"Bearer {self.api_key}" or request.headers.get("x-api-key") == self.api_key
        )

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            with self._lock:
                names = sorted(set(self._queues) | set(self._defaults))
            return {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names
                ],
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await self._handle(request, self._openai)

        @app.post("/v1/messages")
        async def messages(request: Request) -> Any:
            return await self._handle(request, self._anthropic)

        return app

    async def _handle(self, request: Request, render: Callable[..., Any]) -> Any:
        body = await request.json()
        call = Call(request.url.path, str(body.get("model", "")), body, dict(request.headers))
        self._record(call)
        if not self._authorized(request):
            return JSONResponse(
                {"error": {"message": "invalid api key", "type": "invalid_request_error"}}, 401
            )
        step = self._next(call.model)
        if step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step, Fail):
            return JSONResponse(
                {"error": {"message": step.message, "type": "server_error", "code": step.status}},
                status_code=step.status,
            )
        messages = body.get("messages") or []
        source = step.text if step.text is not None else echo
        text = source(messages) if callable(source) else source
        return render(body, step, text)

    # --- OpenAI wire format ---------------------------------------------------------

    def _openai(self, body: dict[str, Any], step: Reply, text: str) -> Any:
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time()), body["model"]
        usage = {
            "prompt_tokens": prompt_tokens(body["messages"]),
            "completion_tokens": completion_tokens(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            answer: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": step.finish_reason,
                    }
                ],
            }
            if step.usage:
                answer["usage"] = usage
            return JSONResponse(answer)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and step.usage

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return (
                "data: "
                + json.dumps(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                )
                + "\n\n"
            )

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for i, piece in enumerate(words(text)):
                if step.break_after is not None and i >= step.break_after:
                    raise ConnectionAbortedError("injected stream break")
                if step.chunk_delay:
                    await asyncio.sleep(step.chunk_delay)
                yield chunk({"content": piece})
            yield chunk({}, step.finish_reason)
            if include_usage:
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # --- Anthropic wire format ------------------------------------------------------

    def _anthropic(self, body: dict[str, Any], step: Reply, text: str) -> Any:
        mid, model = f"msg_{uuid.uuid4().hex[:12]}", body["model"]
        stop = {"stop": "end_turn", "length": "max_tokens"}.get(step.finish_reason, "end_turn")
        usage = {
            "input_tokens": prompt_tokens(body["messages"], str(body.get("system") or "")),
            "output_tokens": completion_tokens(text),
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage if step.usage else {},
                }
            )

        def event(kind: str, data: dict[str, Any]) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        async def events() -> AsyncIterator[str]:
            start_usage = (
                {"input_tokens": usage["input_tokens"], "output_tokens": 0} if step.usage else {}
            )
            yield event(
                "message_start",
                {
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "usage": start_usage,
                    }
                },
            )
            yield event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            )
            for i, piece in enumerate(words(text)):
                if step.break_after is not None and i >= step.break_after:
                    raise ConnectionAbortedError("injected stream break")
                if step.chunk_delay:
                    await asyncio.sleep(step.chunk_delay)
                yield event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": piece}},
                )
            yield event("content_block_stop", {"index": 0})
            yield event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop},
                    "usage": {"output_tokens": usage["output_tokens"]} if step.usage else {},
                },
            )
            yield event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")
