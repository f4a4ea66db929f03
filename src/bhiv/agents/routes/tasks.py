"""Tasks: submission, status, cancellation, and the lease protocol of external agents."""

# No `from __future__ import annotations`: FastAPI must resolve these local types.

import datetime as dt
from typing import Annotated

from fastapi import Depends, Path, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.agents import queue
from bhiv.agents.models import TASK_FLOW, Task, TaskStatus
from bhiv.agents.schemas import (
    Capability,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    TaskCreate,
    TaskRead,
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
from bhiv.core.crud import get_or_404
from bhiv.core.db import SessionDep
from bhiv.core.errors import Problem
from bhiv.core.routing import service_router

router = service_router(tags=["tasks"])
TaskId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Task ID.")]

task_page = page_params(
    {
        "id": Task.id,
        "priority": Task.priority,
        "enqueued_at": Task.enqueued_at,
        "finished_at": Task.finished_at,
    },
    default_sort="-id",
)


def _lease_lost(task: Task) -> Problem:
    return Problem(
        409,
        f"Task {task.id} is {task.status.value} and this lease is no longer valid (expired, requeued or cancelled).",
        kind="lease-lost",
        extra={"current": task.status.value},
    )


@router.post(
    "/tasks",
    response_model=TaskRead,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a task",
    description="Routed to the least-loaded active agent with the capability; queued until one is free.",
)
def submit(
    request: Request,
    body: TaskCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> TaskRead:
    now = utcnow()
    task = Task(
        capability=body.capability,
        priority=body.priority,
        payload=body.payload,
        sort_key=queue.sort_key(
            now, body.priority, request.app.state.settings.agents_aging_seconds
        ),
        max_attempts=body.max_attempts,
        timeout_seconds=body.timeout_seconds,
        status=TaskStatus.queued,
        attempts=0,
        submitted_by=identity.subject,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    session.flush()
    answer = TaskRead.model_validate(task)
    session.commit()
    request.app.state.engine.wake.set()
    return answer


@router.get("/tasks", response_model=Page[TaskRead], summary="List tasks")
def list_tasks(
    session: SessionDep,
    params: Annotated[PageParams, Depends(task_page)],
    status_: Annotated[
        TaskStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
    capability: Annotated[Capability | None, Query(description="Only this capability.")] = None,
    agent_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Only this agent's.")
    ] = None,
    workflow_run_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Only this run's.")
    ] = None,
) -> Page[TaskRead]:
    stmt = select(Task)
    if status_ is not None:
        stmt = stmt.where(Task.status == status_)
    if capability is not None:
        stmt = stmt.where(Task.capability == capability)
    if agent_id is not None:
        stmt = stmt.where(Task.agent_id == agent_id)
    if workflow_run_id is not None:
        stmt = stmt.where(Task.workflow_run_id == workflow_run_id)
    return paginate(session, stmt, params, TaskRead.model_validate)


@router.get("/tasks/{task_id}", response_model=TaskRead, summary="Get a task")
def get_task(task_id: TaskId, session: SessionDep) -> TaskRead:
    return TaskRead.model_validate(get_or_404(session, Task, task_id, "Task"))


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskRead,
    summary="Cancel a queued or running task",
    responses={409: {"description": "The task has already finished."}},
)
def cancel(task_id: TaskId, session: SessionDep) -> TaskRead:
    task = get_or_404(session, Task, task_id, "Task", lock=True)
    TASK_FLOW.check(task_id, task.status, TaskStatus.cancelled)
    queue.cancel(session, task)
    answer = TaskRead.model_validate(task)
    session.commit()
    return answer


@router.post(
    "/tasks/{task_id}/heartbeat",
    response_model=TaskRead,
    summary="Extend a task's lease",
    responses={409: {"description": "The lease was lost."}},
)
def heartbeat(
    request: Request, task_id: TaskId, body: HeartbeatRequest, session: SessionDep
) -> TaskRead:
    task = get_or_404(session, Task, task_id, "Task", lock=True)
    if task.status != TaskStatus.running or task.lease_token != body.lease_token:
        raise _lease_lost(task)
    now = utcnow()
    seconds = body.extend_seconds or request.app.state.settings.agents_task_lease_seconds
    task.lease_expires_at = now + dt.timedelta(seconds=seconds)
    task.updated_at = now
    answer = TaskRead.model_validate(task)
    session.commit()
    return answer


@router.post(
    "/tasks/{task_id}/complete",
    response_model=TaskRead,
    summary="Report a leased task's result",
    responses={409: {"description": "The lease was lost."}},
)
def complete(
    request: Request, task_id: TaskId, body: CompleteRequest, session: SessionDep
) -> TaskRead:
    return _finish(request, session, task_id, body.lease_token, result=body.result)


@router.post(
    "/tasks/{task_id}/fail",
    response_model=TaskRead,
    summary="Report a leased task's failure",
    responses={409: {"description": "The lease was lost."}},
)
def fail(request: Request, task_id: TaskId, body: FailRequest, session: SessionDep) -> TaskRead:
    return _finish(
        request, session, task_id, body.lease_token, error=body.error, retryable=body.retryable
    )


def _finish(
    request: Request, session: Session, task_id: int, token: str, **outcome: object
) -> TaskRead:
    task = get_or_404(session, Task, task_id, "Task", lock=True)
    if queue.finish(session, task_id, token, **outcome) is None:  # type: ignore[arg-type]
        raise _lease_lost(task)
    answer = TaskRead.model_validate(task)
    session.commit()
    request.app.state.engine.wake.set()
    return answer
