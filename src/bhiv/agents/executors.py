"""Executing work: one workflow step (``StepExecutor``) and one task taken by a
built-in agent (``BuiltinAgents``: llm, http, service).

Every outcome is recorded through the engine's transitions before anything that
depends on it happens; a call's failure says whether another attempt may help
(``CallFailed.retryable``) and the step's retry policy decides whether it gets one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from bhiv.agents import expressions, queue
from bhiv.agents.calls import CallFailed
from bhiv.agents.definitions import Step
from bhiv.agents.models import Agent, StepRun, Task, TaskStatus

if TYPE_CHECKING:
    from bhiv.agents.engine import WorkflowEngine

log = logging.getLogger("bhiv.agents.engine")


class StepExecutor:
    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine

    async def run(self, run_id: int, step: Step, names: dict[str, Any]) -> None:
        engine = self.engine
        try:
            if step.when is not None and not expressions.evaluate(step.when, names):
                await engine.db_call(engine.transitions.skip, run_id, step)
                return
        except expressions.ExpressionError as exc:
            await engine.fail(run_id, step, f"when: {exc}", False)
            return
        try:
            prepared = self.prepare(step, names)
        except expressions.ExpressionError as exc:
            await engine.fail(run_id, step, str(exc), False)
            return
        if step.type == "agent" and not step.wait_for_agent:
            if not await engine.db_call(self.some_agent_can, step.capability):
                reason = (
                    f"no agent has capability {step.capability!r}: register one, or set "
                    "wait_for_agent: true on the step to wait for one"
                )
                await engine.fail(run_id, step, reason, False)
                return
        started = await engine.db_call(engine.transitions.start, run_id, step, prepared)
        # A wait step ends on a later pass (its timer); an agent step when its task does.
        if not started or step.type in ("wait", "agent"):
            return
        try:
            output = await asyncio.wait_for(
                self.perform(step, prepared, names), step.timeout_seconds
            )
        except TimeoutError:
            await engine.fail(run_id, step, f"timed out after {step.timeout_seconds:g} s", True)
        except CallFailed as exc:
            await engine.fail(run_id, step, str(exc), exc.retryable)
        except expressions.ExpressionError as exc:
            await engine.fail(run_id, step, str(exc), False)
        else:
            await engine.db_call(engine.transitions.succeed, run_id, step.id, output)

    def some_agent_can(self, capability: str | None) -> bool:
        """Is any registered agent (active or paused) able to take ``capability``?"""
        with self.engine.db.session() as s:
            return any(capability in (a.capabilities or ()) for a in s.scalars(select(Agent)))

    def prepare(self, step: Step, names: dict[str, Any]) -> Any:
        if step.type == "service" and step.call is not None:
            return {
                "service": step.call.service,
                "method": step.call.method,
                "path": expressions.render(step.call.path, names),
                "params": expressions.render(step.call.params, names),
                "body": expressions.render(step.call.body, names),
            }
        if step.type == "agent":
            return expressions.render(step.payload, names) or {}
        if step.type == "condition":
            return bool(expressions.evaluate(step.expression or "False", names))
        if step.type == "set":
            return expressions.render(step.value, names)
        return None

    async def perform(self, step: Step, prepared: Any, names: dict[str, Any]) -> Any:
        if step.type == "condition" and not prepared and step.fail_message:
            raise CallFailed(step.fail_message, retryable=False)
        if step.type in ("condition", "set"):
            return prepared
        call = prepared
        first = True
        while True:
            try:
                response = await self.engine.caller.service(
                    call["service"],
                    call["method"],
                    str(call["path"]),
                    params=call["params"],
                    body=call["body"],
                )
            except CallFailed as exc:
                if first and exc.already_exists and step.on_conflict is not None:
                    return await self.lookup(step, names, exc)
                raise
            first = False
            if step.until is None or expressions.evaluate(
                step.until, {**names, "response": response}
            ):
                return response
            await asyncio.sleep(step.poll_seconds)  # bounded by the step's timeout

    async def lookup(self, step: Step, names: dict[str, Any], conflict: CallFailed) -> Any:
        """Create-or-get: the resource exists already; find it and make it this step's output."""
        assert step.on_conflict is not None
        lookup = step.on_conflict.call
        response = await self.engine.caller.service(
            lookup.service,
            lookup.method,
            str(expressions.render(lookup.path, names)),
            params=expressions.render(lookup.params, names),
            body=expressions.render(lookup.body, names),
        )
        output = expressions.render(step.on_conflict.output, {**names, "response": response})
        if output is None:
            raise CallFailed(f"{conflict}; and on_conflict found nothing", retryable=False)
        return output

    async def check_agent_step(
        self, run_id: int, step: Step, row: StepRun, task: Task | None, now: dt.datetime
    ) -> None:
        """An agent step ends with its task: succeeded, failed or cancelled, or timed out."""
        engine = self.engine
        if task is None:
            await engine.fail(run_id, step, "its task no longer exists", False, True)
        elif task.status == TaskStatus.succeeded:
            await engine.db_call(engine.transitions.succeed, run_id, step.id, task.result)
        elif task.status in (TaskStatus.failed, TaskStatus.cancelled):
            await engine.fail(
                run_id,
                step,
                f"task {task.id} {task.status.value}: {task.error or ''}".strip(),
                False,
                True,
            )
        elif row.started_at and now > row.started_at + dt.timedelta(seconds=step.timeout_seconds):

            def cancel() -> None:
                with engine.db.session() as s:
                    t = s.get(Task, task.id, with_for_update=True, populate_existing=True)
                    if t is not None:
                        queue.cancel(s, t)
                    s.commit()

            await engine.db_call(cancel)
            await engine.fail(
                run_id,
                step,
                f"task {task.id} timed out after {step.timeout_seconds:g} s",
                False,
                True,
            )


class BuiltinAgents:
    """The agents that run inside the engine: each takes a queued task and records its result."""

    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine

    async def execute(self, a: queue.Assignment) -> None:
        engine = self.engine
        error: str | None = None
        retryable = False
        result: Any = None
        try:
            result = await asyncio.wait_for(self.perform(a), a.timeout)
        except TimeoutError:
            error, retryable = f"timed out after {a.timeout:g} s", True
        except CallFailed as exc:
            error, retryable = str(exc), exc.retryable
        except asyncio.CancelledError:
            # Stopping: the lease is given up (engine.stop) and the task requeued.
            engine.leased_tasks.discard(a.token)
            raise
        except Exception as exc:  # a bug in a payload or config: record it on the task
            log.exception("task %s failed", a.task_id)
            error = f"{type(exc).__name__}: {exc}"

        def record() -> None:
            with engine.db.session() as s:
                queue.finish(s, a.task_id, a.token, result=result, error=error, retryable=retryable)
                s.commit()

        try:
            await engine.db_call(record)
        finally:
            engine.leased_tasks.discard(a.token)
        engine.wake.set()

    async def perform(self, a: queue.Assignment) -> Any:
        caller, settings = self.engine.caller, self.engine.settings
        payload, config = a.payload, a.config
        if a.kind == "llm":
            messages = payload.get("messages") or [
                {"role": "user", "content": str(payload.get("prompt", ""))}
            ]
            if config.get("system"):
                messages = [{"role": "system", "content": config["system"]}, *messages]
            body: dict[str, Any] = {"messages": messages}
            model = payload.get("model") or config.get("model") or settings.agents_llm_model
            if model:
                body["model"] = model
            for key in ("temperature", "max_tokens"):
                if key in payload:
                    body[key] = payload[key]
            answer = await caller.service("llm-query", "POST", "/v1/chat/completions", body=body)
            choice = (answer or {}).get("choices", [{}])[0]
            return {
                "content": choice.get("message", {}).get("content"),
                "model": answer.get("model"),
                "usage": answer.get("usage"),
                "finish_reason": choice.get("finish_reason"),
            }
        if a.kind == "http":
            return await caller.url(config["url"], payload)
        if a.kind == "service":
            return await caller.service(
                config["service"],
                config.get("method", "POST"),
                config["path"],
                body=payload if config.get("method", "POST") not in ("GET", "DELETE") else None,
                params=payload if config.get("method") == "GET" else None,
            )
        raise RuntimeError(f"agent kind {a.kind} is not executed by the engine")
