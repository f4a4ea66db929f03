"""One chat request from admission to accounting, shared by ``/v1/chat/completions``
and ``/query``:

1. resolve the route (alias, then fallbacks) and the caller's policy;
2. filter the input (block, redact or flag) and check it fits the context window;
3. record the input decision, check the budget, admit against the rate limits;
4. serve from the cache, or call the models (retries, then fallbacks);
5. filter the output, count tokens and cost, record usage, store in the cache.

Database work happens in short transactions on a worker thread, never across a
provider call: a slow model must not hold SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import httpx
from purgatory import AsyncCircuitBreakerFactory
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bhiv.core import Database, Identity, Problem, utcnow
from bhiv.core.context import request_id_var
from bhiv.core.errors import field_problem
from bhiv.llm import cache, limits, registry, safety
from bhiv.llm.models import Direction, SafetyDecision, UsageRecord, UsageStatus
from bhiv.llm.providers.base import Delta, ProviderError
from bhiv.llm.routing import AllRoutesFailed, Attempt, Route, Router, UpstreamRejected
from bhiv.llm.settings import LlmSettings
from bhiv.llm.tokens import Counter, counter

T = TypeVar("T")
DEFAULT_TENANT = "default"
MONEY = Decimal("0.000001")
# A streamed answer is filtered a sentence at a time: none of the PII patterns
# spans a sentence end followed by whitespace, so nothing is split mid-match.
SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
MAX_SEGMENT = 2000


@dataclass(frozen=True)
class Caller:
    subject: str
    tenant: str
    request_id: str | None

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        return cls(identity.subject, identity.tenant or DEFAULT_TENANT, request_id_var.get())


@dataclass
class ChatRequest:
    endpoint: str
    model: str | None
    messages: list[dict[str, Any]]  # {"role", "content": str, "name"?}
    params: dict[str, Any]  # sampling parameters sent upstream, None values dropped
    fallbacks: list[str] | None = None
    stream: bool = False
    use_cache: bool = True
    # Which messages are scanned for prompt injection (system prompts are not).
    scan_roles: frozenset[str] = frozenset({"user", "tool"})


@dataclass
class Prepared:
    request: ChatRequest
    caller: Caller
    policy: dict[str, Any]
    routes: list[Route]
    messages: list[dict[str, Any]]
    input_verdict: safety.Verdict
    counter: Counter
    prompt_tokens: int
    rate_headers: dict[str, str]
    cache_key: str | None = None
    cached: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Answer:
    id: str
    created: int
    content: str
    finish_reason: str
    route: Route
    prompt_tokens: int
    completion_tokens: int
    usage_source: str
    cost_usd: Decimal
    cache_hit: bool
    tokenizer: str
    attempts: list[dict[str, Any]]
    input_safety: dict[str, Any]
    output_safety: dict[str, Any]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def extension(self) -> dict[str, Any]:
        """The service's own fields, carried next to the OpenAI-shaped ones."""
        return {
            "cache_hit": self.cache_hit,
            "tokenizer": self.tokenizer,
            "usage_source": self.usage_source,
            "cost_usd": str(self.cost_usd),
            "provider": self.route.target.provider,
            "provider_model": self.route.target.model,
            "attempts": self.attempts,
            "safety": {"input": self.input_safety, "output": self.output_safety},
        }

    def headers(self) -> dict[str, str]:
        return {
            "X-BHIV-Cache": "HIT" if self.cache_hit else "MISS",
            "X-BHIV-Model": self.route.alias,
            "X-BHIV-Cost-USD": str(self.cost_usd),
        }


def verdict_summary(v: safety.Verdict) -> dict[str, Any]:
    return {
        "decision": v.decision,
        "reason": v.reason,
        "score": v.score,
        "categories": v.categories,
    }


def cost_of(route: Route, prompt_tokens: int, completion_tokens: int) -> Decimal:
    cost = (
        Decimal(prompt_tokens) * route.input_price_per_1k
        + Decimal(completion_tokens) * route.output_price_per_1k
    )
    return (cost / 1000).quantize(MONEY)


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


class QueryPipeline:
    """The request pipeline for one app: settings, database and the HTTP client to providers."""

    def __init__(self, settings: LlmSettings, db: Database, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.db = db
        self.http = http
        self.breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.llm_breaker_failures,
            default_ttl=settings.llm_breaker_seconds,
        )

    async def db_call(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.db.session(write=True) as session:
                return fn(session)

        return await run_in_threadpool(run)

    # --- before the call ----------------------------------------------------------

    async def prepare(self, caller: Caller, req: ChatRequest) -> Prepared:
        return await self.db_call(lambda s: self._prepare(s, caller, req))

    def _prepare(self, session: Session, caller: Caller, req: ChatRequest) -> Prepared:
        routes = registry.resolve_routes(session, self.settings, req.model, req.fallbacks)
        policy = registry.effective_policy(session, self.settings, caller.subject)
        primary = routes[0]

        texts = [m["content"] for m in req.messages]
        verdict = safety.check(
            texts,
            registry.safety_policy(policy),
            injection_in=[m["role"] in req.scan_roles for m in req.messages],
        )
        messages = [{**m, "content": t} for m, t in zip(req.messages, verdict.texts, strict=True)]
        count = counter(primary.tokenizer)
        prompt_tokens = count.messages(messages)

        if not verdict.blocked:
            # Checked before anything is written: a request that cannot fit is just a 400.
            routes = self._fitting(routes, prompt_tokens, req.params.get("max_tokens"))

        self._record_decision(session, caller, Direction.input, verdict, policy, primary.alias)
        if verdict.blocked:
            self._record_usage(
                session,
                caller,
                req,
                primary,
                UsageStatus.blocked,
                prompt_tokens=prompt_tokens,
                usage_source=count.method,
                error=verdict.reason,
            )
            session.commit()
            raise Problem(
                400,
                f"The request was blocked by the safety policy: {verdict.reason}.",
                kind="content-blocked",
                extra={"safety": verdict_summary(verdict)},
            )
        session.commit()

        now = utcnow()
        limits.check_budget(session, caller.subject, policy, now)
        rate_headers = limits.admit(session, caller.subject, policy, prompt_tokens)
        prepared = Prepared(
            req, caller, policy, routes, messages, verdict, count, prompt_tokens, rate_headers
        )
        if req.use_cache and policy["cache_enabled"] and self.settings.llm_cache_ttl_seconds > 0:
            prepared.cache_key = cache.cache_key([r.alias for r in routes], messages, req.params)
            prepared.cached = cache.lookup(session, caller.tenant, prepared.cache_key)
        session.commit()
        return prepared

    def _fitting(
        self, routes: list[Route], prompt_tokens: int, max_tokens: int | None
    ) -> list[Route]:
        primary = routes[0]
        if (
            primary.max_output_tokens is not None
            and max_tokens is not None
            and max_tokens > primary.max_output_tokens
        ):
            raise field_problem(
                "max_tokens",
                f"model {primary.alias} answers with at most "
                f"{primary.max_output_tokens} tokens; {max_tokens} requested",
            )
        needed = prompt_tokens + (max_tokens or 1)
        if needed > primary.context_window:
            raise Problem(
                400,
                f"The messages take {prompt_tokens} tokens; with max_tokens={max_tokens or 0} that exceeds "
                f"model {primary.alias}'s context window of {primary.context_window} tokens.",
                kind="context-length-exceeded",
                errors=[
                    {
                        "location": "body",
                        "field": "messages",
                        "type": "context_length_exceeded",
                        "message": f"{prompt_tokens} tokens; the context window is {primary.context_window}",
                    }
                ],
            )
        return [r for r in routes if r is primary or needed <= r.context_window]

    # --- the call -----------------------------------------------------------------

    async def _routed(
        self, prep: Prepared, call: Callable[[Router], Awaitable[T]]
    ) -> tuple[Router, T]:
        """Run a routed call; when no model answers, record the failure and raise its problem."""
        router = Router(self.http, self.breakers)
        try:
            return router, await call(router)
        except (AllRoutesFailed, UpstreamRejected) as exc:
            failure = exc  # `exc` is unbound when the except block ends
            await self.db_call(lambda s: self._record_failure(s, prep, failure))
            raise _upstream_problem(exc) from None

    async def complete(self, prep: Prepared) -> Answer:
        if prep.cached is not None:
            return await self._finish(
                prep,
                _from_cache(prep),
                prep.cached["content"],
                prep.cached["finish_reason"],
                None,
                [],
            )
        router, (route, completion) = await self._routed(
            prep, lambda r: r.complete(prep.routes, prep.messages, prep.request.params)
        )
        usage = (
            (completion.usage.prompt_tokens, completion.usage.completion_tokens)
            if completion.usage
            else None
        )
        return await self._finish(
            prep, route, completion.content, completion.finish_reason, usage, router.attempts
        )

    async def open_stream(
        self, prep: Prepared
    ) -> tuple[Route, AsyncGenerator[Delta, None], list[Attempt]]:
        """Open the stream (retries and fallbacks happen here); problems raise before any byte is sent."""
        if prep.cached is not None:
            return _from_cache(prep), _replay(prep.cached), []
        router, (route, deltas) = await self._routed(
            prep, lambda r: r.stream(prep.routes, prep.messages, prep.request.params)
        )
        return route, deltas, router.attempts

    async def relay(
        self,
        prep: Prepared,
        route: Route,
        deltas: AsyncGenerator[Delta, None],
        attempts: list[Attempt],
    ) -> AsyncGenerator[str | Answer, None]:
        """Yield the answer's text as it may be shown, then the final :class:`Answer`.

        With a ``flag`` policy text passes through at once and is checked at the
        end; with ``block`` or ``redact`` it is released a sentence at a time,
        after checking. A blocked sentence ends the answer (finish_reason
        ``content_filter``). A provider failing mid-stream raises
        :class:`StreamBroken` after the usage so far is recorded.
        """
        policy = registry.safety_policy(prep.policy)
        filtering = policy.action != "flag"
        raw: list[str] = []
        pending = ""
        verdicts: list[safety.Verdict] = []
        finish, usage = "stop", None
        blocked = False

        def release(segment: str) -> str | None:
            nonlocal blocked
            v = safety.check([segment], policy, injection_in=[False])
            verdicts.append(v)
            if v.blocked:
                blocked = True
                return None
            return v.texts[0]

        try:
            async for delta in deltas:
                if delta.usage is not None:
                    usage = (delta.usage.prompt_tokens, delta.usage.completion_tokens)
                if delta.finish_reason:
                    finish = delta.finish_reason
                if blocked:
                    break  # nothing more will be shown; stop paying for it
                if not delta.content:
                    continue
                raw.append(delta.content)
                if not filtering:
                    yield delta.content
                    continue
                pending += delta.content
                cut = _segment_end(pending)
                if cut:
                    out = release(pending[:cut])
                    pending = pending[cut:]
                    if out is None:
                        continue
                    yield out
            if filtering and pending and not blocked:
                out = release(pending)
                if out is not None:
                    yield out
        except ProviderError as exc:
            attempts.append(
                Attempt(route.alias, route.target.provider, "error", 0, exc.status, exc.message)
            )
            await self.db_call(
                lambda s: self._record_failure(
                    s, prep, AllRoutesFailed(attempts), route=route, partial="".join(raw)
                )
            )
            raise StreamBroken(exc.message) from None
        except (GeneratorExit, asyncio.CancelledError):
            # The client went away: what the provider produced so far is still
            # paid for, so it is still recorded (shielded from the cancellation).
            with anyio.CancelScope(shield=True):
                await self.db_call(
                    lambda s: self._record_failure(
                        s,
                        prep,
                        AllRoutesFailed(attempts),
                        route=route,
                        partial="".join(raw),
                        error="the client disconnected during the stream",
                    )
                )
            raise
        finally:
            await deltas.aclose()

        content = "".join(raw)
        if not filtering:
            verdicts = [safety.check([content], policy, injection_in=[False])]
        merged = safety.merge(verdicts)
        if blocked:
            finish = "content_filter"
        yield await self._finish(
            prep, route, content, finish, usage, attempts, output_verdict=merged
        )

    # --- after the call -------------------------------------------------------------

    async def _finish(
        self,
        prep: Prepared,
        route: Route,
        content: str,
        finish_reason: str,
        provider_usage: tuple[int, int] | None,
        attempts: list[Attempt],
        *,
        output_verdict: safety.Verdict | None = None,
    ) -> Answer:
        """Filter the output (unless a stream already did), account for it and build the answer."""
        hit = prep.cached is not None
        if output_verdict is None:
            output_verdict = safety.check(
                [content], registry.safety_policy(prep.policy), injection_in=[False]
            )
            shown = "" if output_verdict.blocked else output_verdict.texts[0]
            if output_verdict.blocked:
                finish_reason = "content_filter"
        else:
            shown = content  # already filtered piece by piece by relay()

        if prep.cached is not None:
            prompt_tokens, completion_tokens = (
                prep.cached["prompt_tokens"],
                prep.cached["completion_tokens"],
            )
            usage_source = prep.cached["usage_source"]
        elif provider_usage is not None:
            prompt_tokens, completion_tokens = provider_usage
            usage_source = "provider"
        else:
            count = counter(route.tokenizer)
            prompt_tokens = count.messages(prep.messages)
            completion_tokens = count.text(content)
            usage_source = count.method
        cost = (
            Decimal(0).quantize(MONEY) if hit else cost_of(route, prompt_tokens, completion_tokens)
        )

        answer = Answer(
            id=new_completion_id(),
            created=int(time.time()),
            content=shown,
            finish_reason=finish_reason,
            route=route,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_source=usage_source,
            cost_usd=cost,
            cache_hit=hit,
            tokenizer=prep.counter.method,
            attempts=[a.as_dict() for a in attempts],
            input_safety=verdict_summary(prep.input_verdict),
            output_safety=verdict_summary(output_verdict),
        )
        cacheable = {
            "content": content,
            "finish_reason": finish_reason,
            "alias": route.alias,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "usage_source": usage_source,
        }

        def record(session: Session) -> None:
            self._record_decision(
                session, prep.caller, Direction.output, output_verdict, prep.policy, route.alias
            )
            self._record_usage(
                session,
                prep.caller,
                prep.request,
                route,
                UsageStatus.cache_hit if hit else UsageStatus.ok,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                usage_source=usage_source,
                cost=cost,
                attempts=len(attempts),
                started=prep.started,
            )
            limits.add_tokens(session, prep.caller.subject, completion_tokens)
            if prep.cache_key is not None and not hit and finish_reason in ("stop", "length"):
                cache.store(
                    session,
                    prep.caller.tenant,
                    prep.cache_key,
                    route.alias,
                    cacheable,
                    self.settings.llm_cache_ttl_seconds,
                )
            session.commit()

        await self.db_call(record)
        return answer

    def _record_failure(
        self,
        session: Session,
        prep: Prepared,
        exc: AllRoutesFailed | UpstreamRejected,
        *,
        route: Route | None = None,
        partial: str = "",
        error: str | None = None,
    ) -> None:
        route = route or prep.routes[0]
        completion = counter(route.tokenizer).text(partial)
        self._record_usage(
            session,
            prep.caller,
            prep.request,
            route,
            UsageStatus.error,
            prompt_tokens=prep.prompt_tokens,
            completion_tokens=completion,
            usage_source=prep.counter.method,
            cost=cost_of(route, prep.prompt_tokens, completion) if partial else Decimal(0),
            attempts=len(exc.attempts),
            started=prep.started,
            error=error or _failure_text(exc),
        )
        session.commit()

    def _record_decision(
        self,
        session: Session,
        caller: Caller,
        direction: Direction,
        v: safety.Verdict,
        policy: dict[str, Any],
        alias: str | None,
    ) -> None:
        session.add(
            SafetyDecision(
                request_id=caller.request_id,
                subject=caller.subject,
                tenant=caller.tenant,
                direction=direction,
                decision=v.decision,
                policy_action=policy["safety_action"],
                reason=v.reason[:500],
                score=v.score,
                findings=v.findings,
                model_alias=alias,
            )
        )

    def _record_usage(
        self,
        session: Session,
        caller: Caller,
        req: ChatRequest,
        route: Route,
        status: UsageStatus,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        usage_source: str = "estimate",
        cost: Decimal = Decimal(0),
        attempts: int = 0,
        started: float | None = None,
        error: str | None = None,
    ) -> None:
        session.add(
            UsageRecord(
                request_id=caller.request_id,
                subject=caller.subject,
                tenant=caller.tenant,
                endpoint=req.endpoint,
                model_alias=route.alias,
                provider=route.target.provider,
                provider_model=route.target.model,
                stream=req.stream,
                status=status,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                usage_source=usage_source,
                cost_usd=cost,
                attempts=attempts,
                latency_ms=int((time.perf_counter() - started) * 1000) if started else 0,
                error=error[:500] if error else None,
            )
        )

    # --- helpers for conversations --------------------------------------------------

    async def summarize(self, caller: Caller, routes: list[Route], transcript: str) -> str:
        """Summarise earlier turns of a conversation with the conversation's own model."""
        messages = [
            {
                "role": "system",
                "content": "Summarise the conversation below in a few sentences. Keep names, "
                "numbers, decisions and open questions; write nothing else.",
            },
            {"role": "user", "content": transcript},
        ]
        req = ChatRequest("summarize", routes[0].alias, messages, {})
        prep = Prepared(
            req,
            caller,
            {},
            routes,
            messages,
            safety.Verdict("allowed", "", 0.0),
            counter(routes[0].tokenizer),
            0,
            {},
        )
        started = prep.started
        router, (route, completion) = await self._routed(
            prep, lambda r: r.complete(routes, messages, {})
        )
        count = counter(route.tokenizer)
        if completion.usage:
            p, c, source = (
                completion.usage.prompt_tokens,
                completion.usage.completion_tokens,
                "provider",
            )
        else:
            p, c, source = count.messages(messages), count.text(completion.content), count.method

        def record(session: Session) -> None:
            self._record_usage(
                session,
                caller,
                req,
                route,
                UsageStatus.ok,
                prompt_tokens=p,
                completion_tokens=c,
                usage_source=source,
                cost=cost_of(route, p, c),
                attempts=len(router.attempts),
                started=started,
            )
            limits.add_tokens(session, caller.subject, p + c)
            session.commit()

        await self.db_call(record)
        return completion.content.strip()


class StreamBroken(Exception):
    """The provider failed after the stream had started; the caller gets an error event."""


def _segment_end(text: str) -> int:
    last = None
    for m in SENTENCE_END.finditer(text):
        last = m
    if last is not None:
        return last.end()
    if len(text) > MAX_SEGMENT:
        cut = text.rfind(" ", 0, MAX_SEGMENT)
        return cut + 1 if cut > 0 else MAX_SEGMENT
    return 0


def _from_cache(prep: Prepared) -> Route:
    alias = prep.cached["alias"] if prep.cached else prep.routes[0].alias
    return next((r for r in prep.routes if r.alias == alias), prep.routes[0])


async def _replay(cached: dict[str, Any]) -> AsyncGenerator[Delta, None]:
    yield Delta(content=cached["content"])
    yield Delta(finish_reason=cached["finish_reason"])


def _failure_text(exc: AllRoutesFailed | UpstreamRejected) -> str:
    if isinstance(exc, UpstreamRejected):
        return exc.error.message
    return "; ".join(f"{a.model}: {a.error}" for a in exc.attempts if a.error)


def _upstream_problem(exc: AllRoutesFailed | UpstreamRejected) -> Problem:
    attempts = [a.as_dict() for a in exc.attempts]
    if isinstance(exc, UpstreamRejected):
        return Problem(
            400,
            f"The provider refused the request: {exc.error.message}",
            kind="upstream-rejected",
            extra={"attempts": attempts},
        )
    if exc.all_timeouts:
        return Problem(
            504,
            "Every model in the route timed out.",
            kind="upstream-timeout",
            extra={"attempts": attempts},
        )
    return Problem(
        502,
        "Every model in the route failed; see attempts.",
        kind="upstream-failed",
        extra={"attempts": attempts},
    )
