"""Operations on a run from outside the engine: signals, retry from the failed step, compensate.

Each is one transaction on the locked run, with a row of the run's history, and
leaves the driving to the engine: the run is made claimable (no lease) and the
route wakes the engine. Cancel (terminate) lives beside them in the routes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents.models import (
    RUN_FINAL,
    RUN_FLOW,
    RunEvent,
    RunSignal,
    RunStatus,
    StepRun,
    StepStatus,
    WorkflowRun,
)
from bhiv.core.crud import get_or_404
from bhiv.core.db import utcnow
from bhiv.core.errors import conflict


def signal(session: Session, run_id: int, name: str, payload: Any, sender: str) -> RunSignal:
    """Keep a signal for the run's wait step of that name; 409 once the run has finished."""
    run = get_or_404(session, WorkflowRun, run_id, "Run", lock=True)
    if run.status in RUN_FINAL:
        raise conflict(
            f"Run {run_id} has finished ({run.status.value}); it takes no more signals.",
            run_status=run.status.value,
        )
    now = utcnow()
    sent = RunSignal(run_id=run_id, name=name, payload=payload, sent_by=sender, received_at=now)
    session.add(sent)
    session.flush()
    session.add(
        RunEvent(
            run_id=run_id,
            step_id=None,
            kind="signal_received",
            at=now,
            detail={"signal": sent.id, "name": name, "sent_by": sender},
        )
    )
    return sent


def retry(session: Session, run_id: int, actor: str) -> WorkflowRun:
    """Run a failed run again from its failed steps; the steps that succeeded keep their output."""
    run = get_or_404(session, WorkflowRun, run_id, "Run", lock=True)
    RUN_FLOW.check(run_id, run.status, RunStatus.running)  # only a failed run
    now = utcnow()
    again = []
    for row in session.scalars(
        select(StepRun).where(StepRun.run_id == run_id, StepRun.status == StepStatus.failed)
    ):
        # A fresh set of attempts; the history keeps the failed ones.
        row.status = StepStatus.pending
        row.attempts = 0
        row.error = None
        row.due_at = None
        row.finished_at = None
        row.updated_at = now
        again.append(row.step_id)
    _reopen(session, run, RunStatus.running, "run_retried", {"steps": sorted(again), "by": actor})
    return run


def compensate(session: Session, run_id: int, actor: str) -> WorkflowRun:
    """Undo a failed run's completed steps (their compensations, newest first)."""
    run = get_or_404(session, WorkflowRun, run_id, "Run", lock=True)
    RUN_FLOW.check(run_id, run.status, RunStatus.compensating)  # a failed (or running) run
    if run.status != RunStatus.failed:
        raise conflict(
            f"Run {run_id} is {run.status.value}; only a failed run can be compensated "
            "(a running run compensates by itself when a step with on_error: compensate fails)."
        )
    _reopen(session, run, RunStatus.compensating, "run_compensation_requested", {"by": actor})
    return run


def _reopen(
    session: Session, run: WorkflowRun, status: RunStatus, kind: str, detail: dict[str, Any]
) -> None:
    now = utcnow()
    run.status = status
    run.finished_at = None
    run.error = None
    run.lease_owner = None
    run.lease_expires_at = None
    run.updated_at = now
    session.add(RunEvent(run_id=run.id, step_id=None, kind=kind, at=now, detail=detail))
