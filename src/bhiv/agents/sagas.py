"""Compensation (sagas): a run that failed with ``on_error: compensate`` undoes its
completed steps, most recently completed first, then ends compensated — or failed,
naming the steps whose compensation itself failed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents import expressions
from bhiv.agents.calls import CallFailed
from bhiv.agents.models import RunStatus, StepRun, StepStatus, WorkflowRun
from bhiv.agents.transitions import finish
from bhiv.core.db import utcnow

if TYPE_CHECKING:
    from bhiv.agents.engine import WorkflowEngine
    from bhiv.agents.runs import Snapshot


class Sagas:
    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine

    async def compensate(self, snap: Snapshot) -> None:
        """Run the compensations of completed steps, most recently completed first."""
        engine = self.engine
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
                        engine.caller.service(
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
                        await asyncio.sleep(step.retry.delay_after(attempt))
            await engine.db_call(engine.transitions.compensated, snap.run.id, row.step_id, error)
        await engine.db_call(self.end, snap.run.id)

    def end(self, run_id: int) -> None:
        """All compensations tried: the run ends compensated, or failed if one failed."""

        def change(s: Session, run: WorkflowRun) -> None:
            now = utcnow()
            broken = s.scalars(
                select(StepRun.step_id).where(
                    StepRun.run_id == run_id, StepRun.status == StepStatus.compensation_failed
                )
            ).all()
            if broken:
                run.error = f"{run.error}; compensation failed for {', '.join(broken)}"
                finish(s, run, RunStatus.failed, now)
            else:
                finish(s, run, RunStatus.compensated, now)
            run.updated_at = now

        self.engine.transitions.apply(run_id, change, expect=RunStatus.compensating)
