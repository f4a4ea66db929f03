"""The durable workflow engine and the built-in agents' executor.

One background loop per replica (a lifespan hook). Each tick it requeues
expired task leases, hands queued tasks to built-in agents, and claims
workflow runs (a lease per run, so replicas share the work and a dead
replica's runs move on once their lease lapses), driving each claimed run
one pass at a time.

Durability: every step transition (started, succeeded, failed, retry
scheduled, skipped, compensated) is committed before the engine does anything
that depends on it, together with a row of the run's history. A step whose
result is committed is never run again; a step that was in flight when the
process stopped is run again on resume (at-least-once, as in Temporal), so
service steps should be idempotent or carry a unique reference.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bhiv.agents import expressions, queue
from bhiv.agents.calls import CallFailed, ServiceCaller
from bhiv.agents.definitions import Step, WorkflowSpec
from bhiv.agents.models import (
    RUN_FINAL,
    Agent,
    RunEvent,
    RunStatus,
    StepRun,
    StepStatus,
    Task,
    TaskStatus,
    WorkflowDefinition,
    WorkflowRun,
)
from bhiv.agents.settings import AgentsSettings
from bhiv.core import tracing
from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.backoff import delay_after, exponential
from bhiv.core.db import Database, rows_changed, utcnow

log = logging.getLogger("bhiv.agents.engine")

DONE = frozenset(
    {
        StepStatus.succeeded,
        StepStatus.failed,
        StepStatus.skipped,
        StepStatus.compensated,
        StepStatus.compensation_failed,
    }
)


def satisfied(step_status: StepStatus, spec_step: Step) -> bool:
    """Does a finished dependency let its dependants start?"""
    if step_status in (StepStatus.succeeded, StepStatus.skipped, StepStatus.compensated):
        return True
    return step_status == StepStatus.failed and spec_step.on_error == "continue"


class Snapshot:
    def __init__(
        self,
        run: WorkflowRun,
        spec: WorkflowSpec,
        steps: dict[str, StepRun],
        tasks: dict[int, Task],
    ):
        self.run = run
        self.spec = spec
        self.steps = steps
        self.tasks = tasks

    def names(self) -> dict[str, Any]:
        return {
            "input": self.run.input,
            "run": {"id": self.run.id, "workflow": self.run.workflow, "version": self.run.version},
            "steps": {
                s.id: {
                    "status": (row.status.value if (row := self.steps.get(s.id)) else "pending"),
                    "output": row.output if row else None,
                }
                for s in self.spec.steps
            },
        }


class WorkflowEngine:
    def __init__(self, app: FastAPI) -> None:
        self.settings: AgentsSettings = app.state.settings
        self.db: Database = app.state.db
        self.caller = ServiceCaller(self.settings)
        self.owner = uuid.uuid4().hex
        self.drivers: dict[int, asyncio.Task[None]] = {}
        self.executions: set[asyncio.Task[None]] = set()
        # Steps being executed by this process, so a pass neither starts one twice nor
        # mistakes one for a step orphaned by a restart.
        self.inflight: set[tuple[int, str]] = set()
        self.wake = asyncio.Event()

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    # --- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("engine tick failed")
            # `wake` (set when work arrives over the API) ends the pause early.
            await sleep_unless_stopped(self.wake, self.settings.agents_poll_interval_seconds)
            self.wake.clear()

    async def tick(self) -> None:
        await self._db(self._expire)
        for assignment in await self._db(self._dispatch):
            t = asyncio.create_task(self.execute(assignment))
            self.executions.add(t)
            t.add_done_callback(self.executions.discard)
        for run_id in await self._db(self._claim_runs):
            driver = self.drivers.get(run_id)
            if driver is None or driver.done():
                self.drivers[run_id] = asyncio.create_task(self._drive(run_id))
        for run_id in [r for r, d in self.drivers.items() if d.done()]:
            del self.drivers[run_id]

    async def stop(self) -> None:
        pending = [*self.drivers.values(), *self.executions]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._db(self._release)
        await self.caller.aclose()

    # Each step first looks with a read transaction and takes the write lock
    # (SQLite: BEGIN IMMEDIATE) only when there is something to do, so an idle
    # engine never competes with the API's writers.

    def _expire(self) -> None:
        with self.db.session(write=False) as s:
            due = s.scalar(
                select(Task.id)
                .where(Task.status == TaskStatus.running, Task.lease_expires_at < utcnow())
                .limit(1)
            )
        if due is not None:
            with self.db.session() as s:
                queue.expire_leases(s)

    def _dispatch(self) -> list[queue.Assignment]:
        with self.db.session(write=False) as s:
            if s.scalar(select(Task.id).where(Task.status == TaskStatus.queued).limit(1)) is None:
                return []
        with self.db.session() as s:
            return queue.dispatch_builtin(s)

    def _claim_runs(self) -> list[int]:
        now = utcnow()
        until = now + dt.timedelta(seconds=self.settings.agents_run_lease_seconds)
        active = (RunStatus.running, RunStatus.compensating)
        claimable = or_(
            WorkflowRun.lease_owner == self.owner,
            WorkflowRun.lease_expires_at.is_(None),
            WorkflowRun.lease_expires_at < now,
        )
        with self.db.session(write=False) as s:
            ids = s.scalars(
                select(WorkflowRun.id)
                .where(WorkflowRun.status.in_(active), claimable)
                .order_by(WorkflowRun.id)
                .limit(100)
            ).all()
        if not ids:
            return []
        won = []
        with self.db.session() as s:
            for run_id in ids:
                result = s.execute(
                    update(WorkflowRun)
                    .where(WorkflowRun.id == run_id, WorkflowRun.status.in_(active), claimable)
                    .values(lease_owner=self.owner, lease_expires_at=until)
                )
                if rows_changed(result) == 1:
                    won.append(run_id)
            s.commit()
        return won

    def _release(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            s.commit()

    # --- built-in agents -----------------------------------------------------------------

    async def execute(self, a: queue.Assignment) -> None:
        error: str | None = None
        retryable = False
        result: Any = None
        try:
            result = await asyncio.wait_for(self._perform(a), a.timeout)
        except TimeoutError:
            error, retryable = f"timed out after {a.timeout:g} s", True
        except CallFailed as exc:
            error, retryable = str(exc), exc.retryable
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a payload or config: record it on the task
            log.exception("task %s failed", a.task_id)
            error = f"{type(exc).__name__}: {exc}"

        def record() -> None:
            with self.db.session() as s:
                queue.finish(s, a.task_id, a.token, result=result, error=error, retryable=retryable)
                s.commit()

        await self._db(record)
        self.wake.set()

    async def _perform(self, a: queue.Assignment) -> Any:
        payload, config = a.payload, a.config
        if a.kind == "llm":
            messages = payload.get("messages") or [
                {"role": "user", "content": str(payload.get("prompt", ""))}
            ]
            if config.get("system"):
                messages = [{"role": "system", "content": config["system"]}, *messages]
            body: dict[str, Any] = {"messages": messages}
            model = payload.get("model") or config.get("model") or self.settings.agents_llm_model
            if model:
                body["model"] = model
            for key in ("temperature", "max_tokens"):
                if key in payload:
                    body[key] = payload[key]
            answer = await self.caller.service(
                "llm-query", "POST", "/v1/chat/completions", body=body
            )
            choice = (answer or {}).get("choices", [{}])[0]
            return {
                "content": choice.get("message", {}).get("content"),
                "model": answer.get("model"),
                "usage": answer.get("usage"),
                "finish_reason": choice.get("finish_reason"),
            }
        if a.kind == "http":
            return await self.caller.url(config["url"], payload)
        if a.kind == "service":
            return await self.caller.service(
                config["service"],
                config.get("method", "POST"),
                config["path"],
                body=payload if config.get("method", "POST") not in ("GET", "DELETE") else None,
                params=payload if config.get("method") == "GET" else None,
            )
        raise RuntimeError(f"agent kind {a.kind} is not executed by the engine")

    # --- workflow runs -----------------------------------------------------------------------

    async def _drive(self, run_id: int) -> None:
        try:
            await self.advance(run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s: pass failed", run_id)

    def _load(self, run_id: int) -> Snapshot | None:
        with self.db.session(write=False) as s:
            run = s.get(WorkflowRun, run_id)
            if run is None or run.status in RUN_FINAL:
                return None
            definition = s.get(WorkflowDefinition, run.definition_id)
            assert definition is not None
            spec = WorkflowSpec.model_validate({"steps": definition.spec["steps"]})
            steps = {
                r.step_id: r for r in s.scalars(select(StepRun).where(StepRun.run_id == run_id))
            }
            task_ids = [r.task_id for r in steps.values() if r.task_id is not None]
            tasks = (
                {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(task_ids)))}
                if task_ids
                else {}
            )
            return Snapshot(run, spec, steps, tasks)

    async def advance(self, run_id: int) -> None:
        snap = await self._db(self._load, run_id)
        if snap is None:
            return
        if snap.run.status == RunStatus.compensating:
            await self._compensate(snap)
            return
        now = utcnow()
        names = snap.names()
        for step in snap.spec.steps:
            if (run_id, step.id) in self.inflight:
                continue
            row = snap.steps.get(step.id)
            status = row.status if row else StepStatus.pending
            if status in DONE:
                continue
            deps = [snap.steps.get(d) for d in step.needs]
            if not all(
                d is not None
                and d.status in DONE
                and satisfied(d.status, snap.spec.step(d.step_id))
                for d in deps
            ):
                continue
            if row is not None and status == StepStatus.pending and row.due_at and row.due_at > now:
                continue  # waiting for its retry
            if row is not None and status == StepStatus.running:
                if step.type == "wait":
                    if row.due_at is None or row.due_at <= now:
                        await self._db(self._succeed, run_id, step.id, None)
                    continue
                if step.type == "agent":
                    await self._check_agent_step(
                        run_id, step, row, snap.tasks.get(row.task_id or 0), now
                    )
                    continue
                # Any other running step was in flight when its process stopped: run it again.
            # Each ready step runs on its own, so a slow branch never holds back another.
            self.inflight.add((run_id, step.id))
            t = asyncio.create_task(self._step_then_settle(run_id, step, names))
            self.executions.add(t)
            t.add_done_callback(self.executions.discard)
        await self._db(self._settle, run_id)

    async def _step_then_settle(self, run_id: int, step: Step, names: dict[str, Any]) -> None:
        try:
            step_ids: dict[str, str | int] = {"bhiv.run_id": run_id, "bhiv.step_id": step.id}
            with tracing.span(f"workflow step {step.type}", step_ids):
                await self._run_step(run_id, step, names)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not a failed call: record it on the step rather than retry it forever.
            log.exception("run %s: step %s failed unexpectedly", run_id, step.id)
            await self._db(self._fail, run_id, step, f"internal error: {type(exc).__name__}", False)
        finally:
            self.inflight.discard((run_id, step.id))
        try:
            await self._db(self._settle, run_id)
        except Exception:
            log.exception("run %s: settling failed", run_id)
        self.wake.set()

    async def _run_step(self, run_id: int, step: Step, names: dict[str, Any]) -> None:
        try:
            if step.when is not None and not expressions.evaluate(step.when, names):
                await self._db(self._skip, run_id, step)
                return
        except expressions.ExpressionError as exc:
            await self._db(self._fail, run_id, step, f"when: {exc}", False)
            return
        try:
            prepared = self._prepare(step, names)
        except expressions.ExpressionError as exc:
            await self._db(self._fail, run_id, step, str(exc), False)
            return
        if step.type == "agent" and not step.wait_for_agent:
            if not await self._db(self._some_agent_can, step.capability):
                reason = (
                    f"no agent has capability {step.capability!r}: register one, or set "
                    "wait_for_agent: true on the step to wait for one"
                )
                await self._db(self._fail, run_id, step, reason, False)
                return
        started = await self._db(self._start, run_id, step, prepared)
        if not started or step.type in ("wait", "agent"):
            return
        try:
            output = await asyncio.wait_for(
                self._perform_step(step, prepared, names), step.timeout_seconds
            )
        except TimeoutError:
            await self._db(
                self._fail, run_id, step, f"timed out after {step.timeout_seconds:g} s", True
            )
        except CallFailed as exc:
            await self._db(self._fail, run_id, step, str(exc), exc.retryable)
        except expressions.ExpressionError as exc:
            await self._db(self._fail, run_id, step, str(exc), False)
        else:
            await self._db(self._succeed, run_id, step.id, output)

    def _prepare(self, step: Step, names: dict[str, Any]) -> Any:
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

    async def _perform_step(self, step: Step, prepared: Any, names: dict[str, Any]) -> Any:
        if step.type == "condition" and not prepared and step.fail_message:
            raise CallFailed(step.fail_message, retryable=False)
        if step.type in ("condition", "set"):
            return prepared
        call = prepared
        first = True
        while True:
            try:
                response = await self.caller.service(
                    call["service"],
                    call["method"],
                    str(call["path"]),
                    params=call["params"],
                    body=call["body"],
                )
            except CallFailed as exc:
                if first and exc.already_exists and step.on_conflict is not None:
                    return await self._lookup(step, names, exc)
                raise
            first = False
            if step.until is None or expressions.evaluate(
                step.until, {**names, "response": response}
            ):
                return response
            await asyncio.sleep(step.poll_seconds)  # bounded by the step's timeout

    async def _lookup(self, step: Step, names: dict[str, Any], conflict: CallFailed) -> Any:
        """Create-or-get: the resource exists already; find it and make it this step's output."""
        assert step.on_conflict is not None
        lookup = step.on_conflict.call
        response = await self.caller.service(
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

    async def _check_agent_step(
        self, run_id: int, step: Step, row: StepRun, task: Task | None, now: dt.datetime
    ) -> None:
        if task is None:
            await self._db(self._fail, run_id, step, "its task no longer exists", False, True)
        elif task.status == TaskStatus.succeeded:
            await self._db(self._succeed, run_id, step.id, task.result)
        elif task.status in (TaskStatus.failed, TaskStatus.cancelled):
            await self._db(
                self._fail,
                run_id,
                step,
                f"task {task.id} {task.status.value}: {task.error or ''}".strip(),
                False,
                True,
            )
        elif row.started_at and now > row.started_at + dt.timedelta(seconds=step.timeout_seconds):

            def cancel_and_fail() -> None:
                with self.db.session() as s:
                    t = s.get(Task, task.id, with_for_update=True, populate_existing=True)
                    if t is not None:
                        queue.cancel(s, t)
                    s.commit()

            await self._db(cancel_and_fail)
            await self._db(
                self._fail,
                run_id,
                step,
                f"task {task.id} timed out after {step.timeout_seconds:g} s",
                False,
                True,
            )

    # --- transitions (each one transaction, history included) ----------------------------------

    def _row(self, s: Session, run_id: int, step: Step | str, type_: str | None = None) -> StepRun:
        step_id = step if isinstance(step, str) else step.id
        row = s.scalar(
            select(StepRun)
            .where(StepRun.run_id == run_id, StepRun.step_id == step_id)
            .with_for_update()
        )
        if row is None:
            row = StepRun(
                run_id=run_id,
                step_id=step_id,
                type=type_ or (step.type if isinstance(step, Step) else "?"),
                status=StepStatus.pending,
                attempts=0,
            )
            s.add(row)
        return row

    def _some_agent_can(self, capability: str | None) -> bool:
        """Is any registered agent (active or paused) able to take ``capability``?"""
        with self.db.session() as s:
            return any(capability in (a.capabilities or ()) for a in s.scalars(select(Agent)))

    def _active(self, s: Any, run_id: int) -> bool:
        run = s.get(WorkflowRun, run_id, with_for_update=True, populate_existing=True)
        return run is not None and run.status == RunStatus.running and run.lease_owner == self.owner

    def _start(self, run_id: int, step: Step, prepared: Any) -> bool:
        now = utcnow()
        with self.db.session() as s:
            if not self._active(s, run_id):
                return False
            row = self._row(s, run_id, step)
            if row.status in DONE:
                return False
            row.status = StepStatus.running
            row.attempts += 1
            row.started_at = now
            row.updated_at = now
            row.error = None
            detail: dict[str, Any] = {"attempt": row.attempts}
            if step.type == "wait":
                row.due_at = now + dt.timedelta(seconds=step.seconds or 0)
                detail["until"] = row.due_at.isoformat()
            else:
                row.due_at = None
            if step.type == "agent":
                run = s.get(WorkflowRun, run_id)
                enqueued = utcnow()
                task = Task(
                    capability=step.capability,
                    priority=step.priority,
                    payload=prepared,
                    sort_key=queue.sort_key(
                        enqueued, step.priority, self.settings.agents_aging_seconds
                    ),
                    max_attempts=step.retry.max_attempts,
                    timeout_seconds=step.timeout_seconds,
                    workflow_run_id=run_id,
                    step_id=step.id,
                    enqueued_at=enqueued,
                    submitted_by=run.started_by if run else None,
                    status=TaskStatus.queued,
                )
                s.add(task)
                s.flush()
                row.task_id = task.id
                detail["task_id"] = task.id
            elif step.type == "service":
                detail["request"] = {k: prepared[k] for k in ("service", "method", "path")}
            s.add(
                RunEvent(run_id=run_id, step_id=step.id, kind="step_started", detail=detail, at=now)
            )
            s.commit()
            return True

    def _succeed(self, run_id: int, step_id: str, output: Any) -> None:
        now = utcnow()
        with self.db.session() as s:
            if not self._active(s, run_id):
                return
            row = self._row(s, run_id, step_id)
            if row.status in DONE:
                return
            row.status = StepStatus.succeeded
            row.output = output
            row.finished_at = now
            row.updated_at = now
            row.due_at = None
            s.add(
                RunEvent(
                    run_id=run_id,
                    step_id=step_id,
                    kind="step_succeeded",
                    at=now,
                    detail={"attempt": row.attempts},
                )
            )
            s.commit()

    def _skip(self, run_id: int, step: Step) -> None:
        step_id = step.id
        now = utcnow()
        with self.db.session() as s:
            if not self._active(s, run_id):
                return
            row = self._row(s, run_id, step)
            row.status = StepStatus.skipped
            row.finished_at = now
            row.updated_at = now
            s.add(
                RunEvent(run_id=run_id, step_id=step_id, kind="step_skipped", at=now, detail=None)
            )
            s.commit()

    def _fail(
        self, run_id: int, step: Step, error: str, retryable: bool, final: bool = False
    ) -> None:
        now = utcnow()
        with self.db.session() as s:
            if not self._active(s, run_id):
                return
            row = self._row(s, run_id, step)
            if row.status in DONE:
                return
            row.error = error[:4000]
            row.updated_at = now
            attempts = max(row.attempts, 1)
            if retryable and not final and attempts < step.retry.max_attempts:
                policy = exponential(
                    step.retry.initial_seconds,
                    step.retry.backoff_coefficient,
                    step.retry.max_seconds,
                )
                delay = delay_after(policy, attempts)
                row.status = StepStatus.pending
                row.due_at = now + dt.timedelta(seconds=delay)
                s.add(
                    RunEvent(
                        run_id=run_id,
                        step_id=step.id,
                        kind="step_retry_scheduled",
                        at=now,
                        detail={
                            "attempt": attempts,
                            "error": row.error,
                            "retry_at": row.due_at.isoformat(),
                        },
                    )
                )
            else:
                row.status = StepStatus.failed
                row.finished_at = now
                row.due_at = None
                s.add(
                    RunEvent(
                        run_id=run_id,
                        step_id=step.id,
                        kind="step_failed",
                        at=now,
                        detail={"attempt": attempts, "error": row.error, "on_error": step.on_error},
                    )
                )
            s.commit()
        self.wake.set()

    def _settle(self, run_id: int) -> None:
        """Decide the run's fate from its steps: still going, succeeded, failed or compensating."""
        now = utcnow()
        with self.db.session() as s:
            if not self._active(s, run_id):
                return
            run = s.get(WorkflowRun, run_id)
            assert run is not None
            definition = s.get(WorkflowDefinition, run.definition_id)
            assert definition is not None
            spec = WorkflowSpec.model_validate({"steps": definition.spec["steps"]})
            rows = {
                r.step_id: r for r in s.scalars(select(StepRun).where(StepRun.run_id == run_id))
            }
            failed = [
                st
                for st in spec.steps
                if (r := rows.get(st.id))
                and r.status == StepStatus.failed
                and st.on_error != "continue"
            ]
            if failed:
                first = failed[0]
                run.error = f"step {first.id} failed: {rows[first.id].error}"
                if any(st.on_error == "compensate" for st in failed):
                    run.status = RunStatus.compensating
                    s.add(
                        RunEvent(
                            run_id=run_id,
                            step_id=first.id,
                            kind="compensation_started",
                            at=now,
                            detail=None,
                        )
                    )
                else:
                    self._finish(s, run, RunStatus.failed, now)
                self._abandon(s, run_id, rows, now)
            elif all((r := rows.get(st.id)) is not None and r.status in DONE for st in spec.steps):
                self._finish(s, run, RunStatus.succeeded, now)
            else:
                return
            run.updated_at = now
            s.commit()
        self.wake.set()

    def _abandon(self, s: Any, run_id: int, rows: dict[str, StepRun], now: dt.datetime) -> None:
        """Steps still in flight when the run fails: stop them and their tasks."""
        for row in rows.values():
            if row.status in (StepStatus.running, StepStatus.pending):
                row.status = StepStatus.failed
                row.error = "abandoned: the run failed"
                row.finished_at = now
                if row.task_id is not None and (t := s.get(Task, row.task_id)) is not None:
                    queue.cancel(s, t)

    def _finish(self, s: Any, run: WorkflowRun, status: RunStatus, now: dt.datetime) -> None:
        run.status = status
        run.finished_at = now
        run.lease_owner = None
        run.lease_expires_at = None
        s.add(
            RunEvent(
                run_id=run.id,
                step_id=None,
                kind=f"run_{status.value}",
                at=now,
                detail={"error": run.error} if run.error else None,
            )
        )

    # --- sagas ---------------------------------------------------------------------------

    async def _compensate(self, snap: Snapshot) -> None:
        """Run the compensations of completed steps, most recently completed first."""
        done = sorted(
            (
                row
                for row in snap.steps.values()
                if row.status == StepStatus.succeeded
                and snap.spec.step(row.step_id).compensate is not None
            ),
            key=lambda r: (r.finished_at or r.created_at, r.id),
            reverse=True,
        )
        names = snap.names()
        for row in done:
            step = snap.spec.step(row.step_id)
            assert step.compensate is not None
            error: str | None = None
            attempts = max(3, step.retry.max_attempts)
            for attempt in range(1, attempts + 1):
                try:
                    own = {**names, "output": row.output}
                    await asyncio.wait_for(
                        self.caller.service(
                            step.compensate.service,
                            step.compensate.method,
                            str(expressions.render(step.compensate.path, own)),
                            params=expressions.render(step.compensate.params, own),
                            body=expressions.render(step.compensate.body, own),
                        ),
                        step.timeout_seconds,
                    )
                    error = None
                    break
                except (CallFailed, TimeoutError, expressions.ExpressionError) as exc:
                    error = str(exc) or type(exc).__name__
                    if isinstance(exc, CallFailed) and not exc.retryable:
                        break
                    if attempt < attempts:
                        policy = exponential(
                            step.retry.initial_seconds,
                            step.retry.backoff_coefficient,
                            step.retry.max_seconds,
                        )
                        await asyncio.sleep(delay_after(policy, attempt))
            await self._db(self._compensated, snap.run.id, row.step_id, error)
        await self._db(self._end_compensation, snap.run.id)

    def _compensated(self, run_id: int, step_id: str, error: str | None) -> None:
        now = utcnow()
        with self.db.session() as s:
            run = s.get(WorkflowRun, run_id, with_for_update=True, populate_existing=True)
            if run is None or run.status != RunStatus.compensating or run.lease_owner != self.owner:
                return
            row = self._row(s, run_id, step_id)
            row.status = StepStatus.compensated if error is None else StepStatus.compensation_failed
            row.compensated_at = now
            row.updated_at = now
            if error:
                row.error = f"compensation failed: {error}"[:4000]
            s.add(
                RunEvent(
                    run_id=run_id,
                    step_id=step_id,
                    at=now,
                    kind="step_compensated" if error is None else "compensation_failed",
                    detail={"error": error} if error else None,
                )
            )
            s.commit()

    def _end_compensation(self, run_id: int) -> None:
        now = utcnow()
        with self.db.session() as s:
            run = s.get(WorkflowRun, run_id, with_for_update=True, populate_existing=True)
            if run is None or run.status != RunStatus.compensating or run.lease_owner != self.owner:
                return
            broken = s.scalars(
                select(StepRun.step_id).where(
                    StepRun.run_id == run_id, StepRun.status == StepStatus.compensation_failed
                )
            ).all()
            if broken:
                run.error = f"{run.error}; compensation failed for {', '.join(broken)}"
                self._finish(s, run, RunStatus.failed, now)
            else:
                self._finish(s, run, RunStatus.compensated, now)
            run.updated_at = now
            s.commit()


@asynccontextmanager
async def engine_hook(app: FastAPI) -> AsyncIterator[None]:
    """Lifespan hook: the engine's loop runs for the app's lifetime."""
    engine = WorkflowEngine(app)
    app.state.engine = engine
    # grace=0: steps in flight are cancelled and released (engine.stop); another
    # replica, or this one when it starts again, takes them over.
    try:
        async with background("workflow-engine", engine.run, grace=0):
            yield
    finally:
        await engine.stop()
