"""Driving a claimed run: one pass starts every ready step, then the run is settled.

A pass reads a snapshot of the run, starts each step whose dependencies are
satisfied (each on its own asyncio task, so a slow branch never holds back
another), looks in on steps that are waiting (timers, agent tasks), and decides
the run's fate from its steps: still going, succeeded, failed or compensating.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents import queue
from bhiv.agents.definitions import Step, WorkflowSpec
from bhiv.agents.models import (
    RUN_FINAL,
    RunEvent,
    RunStatus,
    StepRun,
    StepStatus,
    Task,
    WorkflowDefinition,
    WorkflowRun,
)
from bhiv.agents.transitions import DONE, finish
from bhiv.core import tracing
from bhiv.core.db import utcnow

if TYPE_CHECKING:
    from bhiv.agents.engine import WorkflowEngine

log = logging.getLogger("bhiv.agents.engine")


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


def spec_of(s: Session, run: WorkflowRun) -> WorkflowSpec:
    definition = s.get(WorkflowDefinition, run.definition_id)
    assert definition is not None
    return WorkflowSpec.model_validate({"steps": definition.spec["steps"]})


class RunDriver:
    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine
        self.db = engine.db

    async def drive(self, run_id: int) -> None:
        try:
            await self.advance(run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s: pass failed", run_id)

    def load(self, run_id: int) -> Snapshot | None:
        with self.db.session(write=False) as s:
            run = s.get(WorkflowRun, run_id)
            if run is None or run.status in RUN_FINAL:
                return None
            spec = spec_of(s, run)
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
        engine = self.engine
        # A step in flight may finish while the snapshot is read: its row there is then
        # stale ("running") and, no longer in flight, would pass for a step whose process
        # stopped and be run again (seen in traces: a second span per step). Its own
        # settle wakes the engine for a fresh pass instead.
        busy = set(engine.inflight)
        snap = await engine.db_call(self.load, run_id)
        if snap is None:
            return
        if snap.run.status == RunStatus.compensating:
            await engine.sagas.compensate(snap)
            return
        now = utcnow()
        names = snap.names()
        for step in snap.spec.steps:
            if (run_id, step.id) in engine.inflight or (run_id, step.id) in busy:
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
                    await self.check_wait(run_id, step, row, now)
                    continue
                if step.type == "agent":
                    await engine.steps.check_agent_step(
                        run_id, step, row, snap.tasks.get(row.task_id or 0), now
                    )
                    continue
                # Any other running step was in flight when its process stopped: run it again.
            engine.inflight.add((run_id, step.id))
            engine.spawn(self.step_then_settle(run_id, step, names, snap.run.traceparent))
        await engine.db_call(self.settle, run_id)

    async def check_wait(self, run_id: int, step: Step, row: StepRun, now: dt.datetime) -> None:
        """A wait ends on its time, or on its signal (failing if the signal's time runs out)."""
        engine = self.engine
        if step.signal is None:
            if row.due_at is None or row.due_at <= now:
                await engine.db_call(engine.transitions.succeed, run_id, step.id, None)
            return
        if await engine.db_call(engine.transitions.take_signal, run_id, step):
            return
        if row.due_at is not None and row.due_at <= now:
            await engine.fail(
                run_id, step, f"no signal {step.signal!r} within {step.seconds:g} s", False
            )

    async def step_then_settle(
        self, run_id: int, step: Step, names: dict[str, Any], traceparent: str | None
    ) -> None:
        engine = self.engine
        try:
            step_ids: dict[str, str | int] = {"bhiv.run_id": run_id, "bhiv.step_id": step.id}
            # A child of the request that started the run: one trace from the caller
            # through every service the steps call.
            with tracing.span(f"workflow step {step.type}", step_ids, parent=traceparent):
                await engine.steps.run(run_id, step, names)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not a failed call: record it on the step rather than retry it forever.
            log.exception("run %s: step %s failed unexpectedly", run_id, step.id)
            await engine.fail(run_id, step, f"internal error: {type(exc).__name__}", False)
        finally:
            engine.inflight.discard((run_id, step.id))
        try:
            await engine.db_call(self.settle, run_id)
        except Exception:
            log.exception("run %s: settling failed", run_id)
        engine.wake.set()

    def settle(self, run_id: int) -> None:
        """Decide the run's fate from its steps: still going, succeeded, failed or compensating."""

        def change(s: Session, run: WorkflowRun) -> bool:
            now = utcnow()
            spec = spec_of(s, run)
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
                    finish(s, run, RunStatus.failed, now)
                abandon(s, rows, now)
            elif all((r := rows.get(st.id)) is not None and r.status in DONE for st in spec.steps):
                finish(s, run, RunStatus.succeeded, now)
            else:
                return False
            run.updated_at = now
            return True

        if self.engine.transitions.apply(run_id, change):
            self.engine.wake.set()


def abandon(s: Session, rows: dict[str, StepRun], now: dt.datetime) -> None:
    """Steps still in flight when the run fails: stop them and their tasks."""
    for row in rows.values():
        if row.status in (StepStatus.running, StepStatus.pending):
            row.status = StepStatus.failed
            row.error = "abandoned: the run failed"
            row.finished_at = now
            if row.task_id is not None and (t := s.get(Task, row.task_id)) is not None:
                queue.cancel(s, t)
