"""Data sync jobs (admin), on-demand runs and the run history."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import select

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.crud import created, deleted, get_or_404, require_reference, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import field_problem
from bhiv.core.routing import service_router
from bhiv.integrations.models import (
    Connection,
    RunStatus,
    RunTrigger,
    SyncJob,
    SyncLink,
    SyncRun,
    SyncTarget,
)
from bhiv.integrations.schemas import SyncJobCreate, SyncJobRead, SyncJobUpdate, SyncRunRead
from bhiv.integrations.sync import queue_run
from bhiv.integrations.targets import TARGETS

router = service_router(tags=["sync"])
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Sync job ID.")]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Sync run ID.")]
ADMIN = [Depends(require("admin"))]
NULLABLE = {"cursor_field", "page_size_param", "interval_seconds"}

job_pages = page_params(
    {"id": SyncJob.id, "name": SyncJob.name, "created_at": SyncJob.created_at}, default_sort="id"
)
run_pages = page_params({"id": SyncRun.id, "queued_at": SyncRun.queued_at}, default_sort="-id")


def _check_map(target: SyncTarget, field_map: dict[str, str]) -> None:
    known = TARGETS[target].fields
    for name in field_map:
        if name not in known:
            raise field_problem(
                f"field_map.{name}",
                f"{target.value} has no field '{name}'; it has {', '.join(sorted(known))}",
            )


@router.get("/sync-jobs", response_model=Page[SyncJobRead], summary="List sync jobs")
def list_jobs(
    session: SessionDep,
    params: Annotated[PageParams, Depends(job_pages)],
    target: Annotated[SyncTarget | None, Query(description="Only jobs into this target.")] = None,
) -> Page[SyncJobRead]:
    stmt = select(SyncJob)
    if target is not None:
        stmt = stmt.where(SyncJob.target == target)
    return paginate(session, stmt, params, SyncJobRead.model_validate)


@router.post(
    "/sync-jobs",
    response_model=SyncJobRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a sync job",
    description="With `interval_seconds` it first runs right away, then on that schedule. Admin only.",
    dependencies=ADMIN,
    responses={409: {"description": "The name is taken."}},
)
def create_job(body: SyncJobCreate, session: SessionDep, response: Response) -> SyncJobRead:
    require_reference(session, Connection, body.connection_id, "connection_id")
    _check_map(body.target, body.field_map)
    job = SyncJob(**body.model_dump(), next_run_at=utcnow() if body.interval_seconds else None)
    with unique_as_conflict(session, "sync_jobs", {"name": body.name}, "sync job"):
        return created(session, response, job, SyncJobRead.model_validate, "/sync-jobs")


@router.get(
    "/sync-jobs/{job_id}", response_model=SyncJobRead, summary="Get a sync job and its saved state"
)
def get_job(job_id: JobId, session: SessionDep) -> SyncJobRead:
    return SyncJobRead.model_validate(get_or_404(session, SyncJob, job_id, "Sync job"))


@router.patch(
    "/sync-jobs/{job_id}",
    response_model=SyncJobRead,
    summary="Change a sync job",
    dependencies=ADMIN,
)
def update_job(job_id: JobId, body: SyncJobUpdate, session: SessionDep) -> SyncJobRead:
    job = get_or_404(session, SyncJob, job_id, "Sync job")
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in NULLABLE:
            raise field_problem(name, "may not be null")
    if "field_map" in changes:
        _check_map(job.target, changes["field_map"])
    if "interval_seconds" in changes or changes.get("enabled"):
        interval = changes.get("interval_seconds", job.interval_seconds)
        job.next_run_at = utcnow() if interval else None
    with unique_as_conflict(session, "sync_jobs", {"name": changes.get("name")}, "sync job"):
        for name, value in changes.items():
            setattr(job, name, value)
        job.updated_at = utcnow()
        session.flush()
        result = SyncJobRead.model_validate(job)
        session.commit()
    return result


@router.delete(
    "/sync-jobs/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a sync job, its state and its run history",
    description="Records it synced stay in their BHIV services.",
    dependencies=ADMIN,
)
def delete_job(job_id: JobId, session: SessionDep) -> Response:
    return deleted(session, get_or_404(session, SyncJob, job_id, "Sync job"))


@router.post(
    "/sync-jobs/{job_id}/reset",
    response_model=SyncJobRead,
    summary="Forget the saved cursor and links",
    description="The next run reads everything again (a full refresh) and matches records by their natural key.",
    dependencies=ADMIN,
)
def reset_job(job_id: JobId, session: SessionDep) -> SyncJobRead:
    job = get_or_404(session, SyncJob, job_id, "Sync job")
    job.cursor_value = None
    job.updated_at = utcnow()
    for link in session.scalars(select(SyncLink).where(SyncLink.job_id == job_id)):
        session.delete(link)
    result = SyncJobRead.model_validate(job)
    session.commit()
    return result


@router.post(
    "/sync-jobs/{job_id}/runs",
    response_model=SyncRunRead,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Run a sync job now",
    description="Queues a run; the sync worker starts it within a second. 409 if one is already queued or running.",
    responses={409: {"description": "A run of this job is queued or running."}},
)
def run_job(job_id: JobId, session: SessionDep, response: Response) -> SyncRunRead:
    job = get_or_404(session, SyncJob, job_id, "Sync job")
    run = queue_run(session, job, RunTrigger.manual)
    return created(session, response, run, SyncRunRead.model_validate, "/sync-runs")


@router.get(
    "/sync-jobs/{job_id}/runs", response_model=Page[SyncRunRead], summary="A sync job's run history"
)
def list_runs(
    job_id: JobId,
    session: SessionDep,
    params: Annotated[PageParams, Depends(run_pages)],
    status_: Annotated[
        RunStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
) -> Page[SyncRunRead]:
    get_or_404(session, SyncJob, job_id, "Sync job")
    stmt = select(SyncRun).where(SyncRun.job_id == job_id)
    if status_ is not None:
        stmt = stmt.where(SyncRun.status == status_)
    return paginate(session, stmt, params, SyncRunRead.model_validate)


@router.get("/sync-runs/{run_id}", response_model=SyncRunRead, summary="Get a sync run")
def get_run(run_id: RunId, session: SessionDep) -> SyncRunRead:
    return SyncRunRead.model_validate(get_or_404(session, SyncRun, run_id, "Sync run"))
