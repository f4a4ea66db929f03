"""Run and step transitions: each one guarded transaction, its history row included.

Every change to a run or a step goes through ``Transitions.apply``: open a write
session, lock the run, check it is still in the state the change expects and
still leased by this replica, make the change, commit. A replica whose lease has
lapsed (another took the run over) or a run that has ended since the caller last
looked therefore changes nothing, and a change is committed whole or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents import queue
from bhiv.agents.definitions import Step
from bhiv.agents.models import (
    RunEvent,
    RunSignal,
    RunStatus,
    StepRun,
    StepStatus,
    Task,
    TaskStatus,
    WorkflowRun,
)
from bhiv.agents.settings import AgentsSettings
from bhiv.core.db import Database, utcnow

DONE = frozenset(
    {
        StepStatus.succeeded,
        StepStatus.failed,
        StepStatus.skipped,
        StepStatus.compensated,
        StepStatus.compensation_failed,
    }
)

# What a step change returns: the history row's kind and detail, or None to change
# nothing (the session is closed uncommitted).
StepChange = Callable[[Session, WorkflowRun, StepRun, dt.datetime], tuple[str, Any] | None]


def step_row(s: Session, run_id: int, step: Step | str) -> StepRun:
    """The step's row, locked; created (pending) on its first transition."""
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
            type=step.type if isinstance(step, Step) else "?",
            status=StepStatus.pending,
            attempts=0,
        )
        s.add(row)
    return row


def finish(s: Session, run: WorkflowRun, status: RunStatus, now: dt.datetime) -> None:
    """End the run (and give up its lease); the caller commits."""
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


class Transitions:
    def __init__(self, db: Database, owner: str, settings: AgentsSettings) -> None:
        self.db = db
        self.owner = owner
        self.settings = settings

    # --- the helper ------------------------------------------------------------------

    def apply(
        self,
        run_id: int,
        change: Callable[[Session, WorkflowRun], bool | None],
        expect: RunStatus = RunStatus.running,
    ) -> bool:
        """Run ``change`` in one transaction if the run is still ``expect`` and ours.

        ``change`` returns False to leave everything as it was. True when committed.
        """
        with self.db.session() as s:
            run = s.get(WorkflowRun, run_id, with_for_update=True, populate_existing=True)
            if run is None or run.status != expect or run.lease_owner != self.owner:
                return False
            if change(s, run) is False:
                return False
            s.commit()
            return True

    def step(
        self,
        run_id: int,
        step: Step | str,
        change: StepChange,
        *,
        expect: RunStatus = RunStatus.running,
        unless_done: bool = True,
    ) -> bool:
        """A step's transition: ``change`` edits the locked row and names the history row.

        ``unless_done``: a step whose result is already recorded is left alone (a late
        result from an attempt that was taken over must not overwrite it).
        """

        def apply(s: Session, run: WorkflowRun) -> bool:
            now = utcnow()
            row = step_row(s, run_id, step)
            if unless_done and row.status in DONE:
                return False
            event = change(s, run, row, now)
            if event is None:
                return False
            row.updated_at = now
            kind, detail = event
            s.add(RunEvent(run_id=run_id, step_id=row.step_id, kind=kind, detail=detail, at=now))
            return True

        return self.apply(run_id, apply, expect)

    # --- step transitions --------------------------------------------------------------

    def start(self, run_id: int, step: Step, prepared: Any) -> bool:
        def change(s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime) -> tuple[str, Any]:
            row.status = StepStatus.running
            row.attempts += 1
            row.started_at = now
            row.error = None
            detail: dict[str, Any] = {"attempt": row.attempts}
            if step.type == "wait":
                # A signal wait without `seconds` has no deadline.
                row.due_at = (
                    now + dt.timedelta(seconds=step.seconds) if step.seconds is not None else None
                )
                if step.signal is None and row.due_at is None:
                    row.due_at = now
                if row.due_at is not None:
                    detail["until"] = row.due_at.isoformat()
                if step.signal is not None:
                    detail["signal"] = step.signal
            else:
                row.due_at = None
            if step.type == "agent":
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
                    submitted_by=run.started_by,
                    status=TaskStatus.queued,
                )
                s.add(task)
                s.flush()
                row.task_id = task.id
                detail["task_id"] = task.id
            elif step.type == "service":
                detail["request"] = {k: prepared[k] for k in ("service", "method", "path")}
            return "step_started", detail

        return self.step(run_id, step, change)

    def succeed(self, run_id: int, step_id: str, output: Any) -> bool:
        def change(s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime) -> tuple[str, Any]:
            row.status = StepStatus.succeeded
            row.output = output
            row.finished_at = now
            row.due_at = None
            return "step_succeeded", {"attempt": row.attempts}

        return self.step(run_id, step_id, change)

    def take_signal(self, run_id: int, step: Step) -> bool:
        """The waiting step takes the oldest signal of its name, its payload the step's output."""

        def change(
            s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime
        ) -> tuple[str, Any] | None:
            signal = s.scalar(
                select(RunSignal)
                .where(
                    RunSignal.run_id == run_id,
                    RunSignal.name == step.signal,
                    RunSignal.taken_by_step.is_(None),
                )
                .order_by(RunSignal.id)
                .limit(1)
                .with_for_update()
            )
            if signal is None or row.status != StepStatus.running:
                return None
            signal.taken_by_step = step.id
            signal.taken_at = now
            row.status = StepStatus.succeeded
            row.output = signal.payload
            row.finished_at = now
            row.due_at = None
            return "step_succeeded", {"attempt": row.attempts, "signal": signal.id}

        return self.step(run_id, step, change)

    def skip(self, run_id: int, step: Step) -> bool:
        def change(s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime) -> tuple[str, Any]:
            row.status = StepStatus.skipped
            row.finished_at = now
            return "step_skipped", None

        # As before the split: a skip is decided before the step starts, so it is not
        # guarded by the step's own state.
        return self.step(run_id, step, change, unless_done=False)

    def fail(
        self, run_id: int, step: Step, error: str, retryable: bool, final: bool = False
    ) -> bool:
        """Record a failed attempt: a retry is scheduled if the policy allows, else the step fails."""

        def change(s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime) -> tuple[str, Any]:
            row.error = error[:4000]
            attempts = max(row.attempts, 1)
            if retryable and not final and attempts < step.retry.max_attempts:
                row.status = StepStatus.pending
                row.due_at = now + dt.timedelta(seconds=step.retry.delay_after(attempts))
                return "step_retry_scheduled", {
                    "attempt": attempts,
                    "error": row.error,
                    "retry_at": row.due_at.isoformat(),
                }
            row.status = StepStatus.failed
            row.finished_at = now
            row.due_at = None
            return "step_failed", {
                "attempt": attempts,
                "error": row.error,
                "on_error": step.on_error,
            }

        return self.step(run_id, step, change)

    def compensated(self, run_id: int, step_id: str, error: str | None) -> bool:
        def change(s: Session, run: WorkflowRun, row: StepRun, now: dt.datetime) -> tuple[str, Any]:
            row.status = StepStatus.compensated if error is None else StepStatus.compensation_failed
            row.compensated_at = now
            if error:
                row.error = f"compensation failed: {error}"[:4000]
                return "compensation_failed", {"error": error}
            return "step_compensated", None

        # A compensated step is one that succeeded, so "done" is exactly what it expects.
        return self.step(run_id, step_id, change, expect=RunStatus.compensating, unless_done=False)
