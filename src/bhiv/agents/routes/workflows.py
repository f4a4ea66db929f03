"""Workflow definitions (versioned) and runs (start, inspect, history, cancel)."""

# No `from __future__ import annotations`: FastAPI must resolve these local types.

from typing import Annotated

from fastapi import Depends, Path, Query, Request, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bhiv.agents import operations, queue, starts
from bhiv.agents.definitions import SIGNAL_NAME_PATTERN, Name, WorkflowSpec, dag_problem
from bhiv.agents.models import (
    RUN_FLOW,
    RunEvent,
    RunStatus,
    StepRun,
    Task,
    WorkflowDefinition,
    WorkflowRun,
)
from bhiv.agents.schemas import (
    RunCreate,
    RunEventRead,
    RunRead,
    SignalCreate,
    SignalRead,
    StepRead,
    WorkflowCreate,
    WorkflowRead,
)
from bhiv.core import (
    Identity,
    Page,
    PageParams,
    current_identity,
    page_params,
    paginate,
    utcnow,
)
from bhiv.core.crud import get_or_404, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import field_problem
from bhiv.core.routing import service_router

router = service_router(tags=["workflows"])
DefinitionId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Workflow definition ID.")]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Run ID.")]

definition_page = page_params(
    {
        "id": WorkflowDefinition.id,
        "name": WorkflowDefinition.name,
        "version": WorkflowDefinition.version,
    },
    default_sort="name,-version",
)
run_page = page_params(
    {
        "id": WorkflowRun.id,
        "started_at": WorkflowRun.started_at,
        "finished_at": WorkflowRun.finished_at,
    },
    default_sort="-id",
)
event_page = page_params({"id": RunEvent.id}, default_sort="id")


@router.post(
    "/workflows",
    response_model=WorkflowRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a workflow definition (a new version when the name exists)",
    description="Definitions are immutable: posting a name again creates its next version; "
    "runs keep the version they started with.",
)
def create_definition(body: WorkflowCreate, session: SessionDep) -> WorkflowRead:
    if problem := dag_problem(body.steps):
        raise field_problem(*problem)
    spec = WorkflowSpec(steps=body.steps)
    latest = session.scalar(
        select(func.max(WorkflowDefinition.version)).where(WorkflowDefinition.name == body.name)
    )
    now = utcnow()
    definition = WorkflowDefinition(
        name=body.name,
        version=(latest or 0) + 1,
        description=body.description,
        source="api",
        spec=spec.model_dump(mode="json", exclude_defaults=False),
        created_at=now,
        updated_at=now,
    )
    session.add(definition)
    with unique_as_conflict(
        session, "workflow_definitions", {"name": body.name}, "workflow version"
    ):
        session.flush()
    answer = WorkflowRead.model_validate(definition)
    session.commit()
    return answer


@router.get("/workflows", response_model=Page[WorkflowRead], summary="List workflow definitions")
def list_definitions(
    session: SessionDep,
    params: Annotated[PageParams, Depends(definition_page)],
    name: Annotated[Name | None, Query(description="Only this workflow's versions.")] = None,
    latest: Annotated[bool, Query(description="Only each workflow's latest version.")] = False,
) -> Page[WorkflowRead]:
    stmt = select(WorkflowDefinition)
    if name is not None:
        stmt = stmt.where(WorkflowDefinition.name == name)
    if latest:
        newest = (
            select(WorkflowDefinition.name, func.max(WorkflowDefinition.version).label("v"))
            .group_by(WorkflowDefinition.name)
            .subquery()
        )
        stmt = stmt.join(
            newest,
            (newest.c.name == WorkflowDefinition.name) & (newest.c.v == WorkflowDefinition.version),
        )
    return paginate(session, stmt, params, WorkflowRead.model_validate)


@router.get(
    "/workflows/{definition_id}", response_model=WorkflowRead, summary="Get a workflow definition"
)
def get_definition(definition_id: DefinitionId, session: SessionDep) -> WorkflowRead:
    return WorkflowRead.model_validate(
        get_or_404(session, WorkflowDefinition, definition_id, "Workflow definition")
    )


def _commit_and_wake(request: Request, session: Session, run: WorkflowRun) -> RunRead:
    """The run as the caller gets it back, read before the commit expires it; then the
    engine is woken to act on it at once rather than at its next poll."""
    answer = run_read(session, run)
    session.commit()
    request.app.state.engine.wake.set()
    return answer


def run_read(session: Session, run: WorkflowRun) -> RunRead:
    definition = session.get(WorkflowDefinition, run.definition_id)
    rows = {r.step_id: r for r in session.scalars(select(StepRun).where(StepRun.run_id == run.id))}
    steps = []
    for spec_step in definition.spec["steps"] if definition else []:
        row = rows.get(spec_step["id"])
        if row is not None:
            steps.append(StepRead.model_validate(row))
        else:
            steps.append(
                StepRead(
                    step_id=spec_step["id"],
                    type=spec_step["type"],
                    status="pending",
                    attempts=0,
                    output=None,
                    error=None,
                    due_at=None,
                    task_id=None,
                    started_at=None,
                    finished_at=None,
                    compensated_at=None,
                )
            )
    return RunRead.model_validate(
        {**{k: getattr(run, k) for k in RunRead.model_fields if k != "steps"}, "steps": steps}
    )


@router.post(
    "/runs",
    response_model=RunRead,
    status_code=status.HTTP_201_CREATED,
    summary="Start a workflow run",
    responses={422: {"description": "No such workflow or version (`workflow`, `version`)."}},
)
def start_run(
    request: Request,
    body: RunCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> RunRead:
    run = starts.start(session, body.workflow, body.version, body.input, identity.subject)
    return _commit_and_wake(request, session, run)


@router.get(
    "/runs",
    response_model=Page[RunRead],
    summary="List runs",
    description="Steps are left out of list items; get a run for them.",
)
def list_runs(
    session: SessionDep,
    params: Annotated[PageParams, Depends(run_page)],
    workflow: Annotated[Name | None, Query(description="Only this workflow's runs.")] = None,
    status_: Annotated[
        RunStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
) -> Page[RunRead]:
    stmt = select(WorkflowRun)
    if workflow is not None:
        stmt = stmt.where(WorkflowRun.workflow == workflow)
    if status_ is not None:
        stmt = stmt.where(WorkflowRun.status == status_)
    return paginate(
        session,
        stmt,
        params,
        lambda r: RunRead.model_validate(
            {k: getattr(r, k) for k in RunRead.model_fields if k != "steps"}
        ),
    )


@router.get("/runs/{run_id}", response_model=RunRead, summary="Get a run with each step's status")
def get_run(run_id: RunId, session: SessionDep) -> RunRead:
    return run_read(session, get_or_404(session, WorkflowRun, run_id, "Run"))


@router.get(
    "/runs/{run_id}/history",
    response_model=Page[RunEventRead],
    summary="A run's history, oldest first",
)
def run_history(
    run_id: RunId, session: SessionDep, params: Annotated[PageParams, Depends(event_page)]
) -> Page[RunEventRead]:
    get_or_404(session, WorkflowRun, run_id, "Run")
    return paginate(
        session,
        select(RunEvent).where(RunEvent.run_id == run_id),
        params,
        RunEventRead.model_validate,
    )


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunRead,
    summary="Cancel a running run",
    description="No further steps start; its queued or running agent tasks are cancelled. "
    "Compensations do not run (start a compensating workflow if needed).",
    responses={409: {"description": "The run has finished."}},
)
def cancel_run(run_id: RunId, session: SessionDep) -> RunRead:
    run = get_or_404(session, WorkflowRun, run_id, "Run", lock=True)
    RUN_FLOW.check(run_id, run.status, RunStatus.cancelled)
    now = utcnow()
    run.status = RunStatus.cancelled
    run.finished_at = now
    run.updated_at = now
    run.lease_owner = None
    run.lease_expires_at = None
    for task in session.scalars(select(Task).where(Task.workflow_run_id == run_id)):
        queue.cancel(session, task)
    session.add(RunEvent(run_id=run.id, step_id=None, kind="run_cancelled", at=now, detail=None))
    answer = run_read(session, run)
    session.commit()
    return answer


@router.post(
    "/runs/{run_id}/signals/{name}",
    response_model=SignalRead,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a signal to a run",
    description="Wakes the run's wait step that waits for this signal, with the payload as the "
    "step's output; a signal sent before the run reaches that step is kept for it (oldest first).",
    responses={409: {"description": "The run has finished."}},
)
def send_signal(
    request: Request,
    run_id: RunId,
    name: Annotated[str, Path(pattern=SIGNAL_NAME_PATTERN, description="The signal's name.")],
    body: SignalCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> SignalRead:
    sent = operations.signal(session, run_id, name, body.payload, identity.subject)
    answer = SignalRead.model_validate(sent)
    session.commit()
    request.app.state.engine.wake.set()
    return answer


@router.post(
    "/runs/{run_id}/retry",
    response_model=RunRead,
    summary="Retry a failed run from its failed steps",
    description="Failed steps run again with fresh attempts; succeeded steps keep their output "
    "and are not run again.",
    responses={409: {"description": "The run is not failed."}},
)
def retry_run(
    request: Request,
    run_id: RunId,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> RunRead:
    run = operations.retry(session, run_id, identity.subject)
    return _commit_and_wake(request, session, run)


@router.post(
    "/runs/{run_id}/compensate",
    response_model=RunRead,
    summary="Compensate a failed run",
    description="Runs the compensations of its completed steps, newest first; the run ends "
    "compensated (or failed, naming the compensation that failed).",
    responses={409: {"description": "The run is not failed."}},
)
def compensate_run(
    request: Request,
    run_id: RunId,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> RunRead:
    run = operations.compensate(session, run_id, identity.subject)
    return _commit_and_wake(request, session, run)
