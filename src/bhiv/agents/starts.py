"""Starting a run: the one code path for ``POST /runs`` and for triggers.

It adds the run and its ``run_started`` history row to the caller's session and
does not commit, so a trigger can insert its de-duplication row in the same
transaction (the run exists exactly when the firing does).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents.models import RunEvent, RunStatus, WorkflowDefinition, WorkflowRun
from bhiv.core import tracing
from bhiv.core.db import utcnow
from bhiv.core.errors import field_problem


def find_definition(session: Session, workflow: str, version: int | None) -> WorkflowDefinition:
    """The definition to run (the latest without ``version``), or a 422 naming the field."""
    stmt = select(WorkflowDefinition).where(WorkflowDefinition.name == workflow)
    if version is not None:
        stmt = stmt.where(WorkflowDefinition.version == version)
    definition = session.scalar(stmt.order_by(WorkflowDefinition.version.desc()).limit(1))
    if definition is None:
        known = session.scalar(
            select(WorkflowDefinition.id).where(WorkflowDefinition.name == workflow).limit(1)
        )
        if known is not None and version is not None:
            raise field_problem("version", f"workflow {workflow} has no version {version}")
        raise field_problem("workflow", f"no workflow named {workflow!r}")
    return definition


def start(
    session: Session,
    workflow: str,
    version: int | None,
    input_: dict[str, Any],
    started_by: str,
    detail: dict[str, Any] | None = None,
) -> WorkflowRun:
    """Add a running run of ``workflow`` (flushed, not committed); the engine picks it up."""
    definition = find_definition(session, workflow, version)
    now = utcnow()
    run = WorkflowRun(
        definition_id=definition.id,
        workflow=definition.name,
        version=definition.version,
        status=RunStatus.running,
        input=input_,
        started_by=started_by,
        started_at=now,
        created_at=now,
        updated_at=now,
        # Its steps' spans are children of the request (or event delivery) that started it.
        traceparent=tracing.current_traceparent(),
    )
    session.add(run)
    session.flush()
    session.add(
        RunEvent(
            run_id=run.id,
            step_id=None,
            kind="run_started",
            at=now,
            detail={
                "workflow": run.workflow,
                "version": run.version,
                "by": started_by,
                **(detail or {}),
            },
        )
    )
    return run
