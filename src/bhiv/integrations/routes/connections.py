"""Connections to external APIs: CRUD (admin), a test call, health and metrics."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response, status
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.crud import created, deleted, get_or_404, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import conflict, field_problem
from bhiv.core.fields import StorableText
from bhiv.core.pagination import like_pattern
from bhiv.core.routing import service_router
from bhiv.integrations.connections import (
    CallFailed,
    RateLimited,
    check_credentials,
    load_endpoint,
    rate_limited_problem,
)
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.models import AuthType, Connection, SyncJob
from bhiv.integrations.schemas import (
    ConnectionCreate,
    ConnectionMetrics,
    ConnectionRead,
    ConnectionUpdate,
    Credentials,
    TestCall,
    TestCallResult,
)

router = service_router(tags=["connections"])
ConnectionId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Connection ID.")]
ADMIN = [Depends(require("admin"))]

pages = page_params(
    {
        "id": Connection.id,
        "name": Connection.name,
        "created_at": Connection.created_at,
        "calls": Connection.calls,
    },
    default_sort="id",
)


def read(conn: Connection) -> ConnectionRead:
    calls = conn.calls or 0
    if conn.last_called_at is None:
        health = "unknown"
    else:
        health = "healthy" if conn.last_error is None else "failing"
    return ConnectionRead(
        id=conn.id,
        name=conn.name,
        description=conn.description,
        base_url=conn.base_url,
        auth_type=conn.auth_type,
        api_key_header=conn.api_key_header,
        has_credentials=conn.credentials is not None,
        timeout_seconds=conn.timeout_seconds,
        rate_limit_per_minute=conn.rate_limit_per_minute,
        health_path=conn.health_path,
        health=health,
        metrics=ConnectionMetrics(
            calls=calls,
            errors=conn.errors or 0,
            error_rate=round((conn.errors or 0) / calls, 4) if calls else 0.0,
            avg_latency_ms=round(conn.latency_ms_total / calls, 2) if calls else None,
            last_latency_ms=conn.last_latency_ms,
            last_status_code=conn.last_status_code,
            last_error=conn.last_error,
            last_called_at=conn.last_called_at,
            last_success_at=conn.last_success_at,
        ),
        created_at=conn.created_at,
        updated_at=conn.updated_at,
    )


def _plain(credentials: Credentials | None) -> dict[str, str]:
    if credentials is None:
        return {}
    return {k: v.get_secret_value() for k, v in credentials if v is not None}


def _check_egress(request: Request, url: str, field: str) -> None:
    refused = request.app.state.egress.url_refusal(url)
    if refused:
        raise field_problem(field, refused)


@router.get("/connections", response_model=Page[ConnectionRead], summary="List connections")
def list_connections(
    session: SessionDep,
    params: Annotated[PageParams, Depends(pages)],
    q: Annotated[
        Annotated[str, StorableText] | None,
        Query(max_length=200, description="Search name and URL."),
    ] = None,
    auth_type: Annotated[AuthType | None, Query(description="Only this auth type.")] = None,
) -> Page[ConnectionRead]:
    stmt = select(Connection)
    if q:
        pattern = like_pattern(q)
        stmt = stmt.where(
            or_(
                Connection.name.ilike(pattern, escape="\\"),
                Connection.base_url.ilike(pattern, escape="\\"),
            )
        )
    if auth_type is not None:
        stmt = stmt.where(Connection.auth_type == auth_type)
    return paginate(session, stmt, params, read)


@router.post(
    "/connections",
    response_model=ConnectionRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a connection",
    description="Credentials are encrypted at rest and never returned. Admin only.",
    dependencies=ADMIN,
    responses={409: {"description": "The name is taken."}},
)
def create_connection(
    body: ConnectionCreate, request: Request, session: SessionDep, response: Response
) -> ConnectionRead:
    _check_egress(request, body.base_url, "base_url")
    secrets = _plain(body.credentials)
    check_credentials(body.auth_type, secrets)
    box: SecretBox = request.app.state.secret_box
    conn = Connection(
        **body.model_dump(exclude={"credentials", "api_key_header"}),
        api_key_header=body.api_key_header if body.auth_type == AuthType.api_key else None,
        credentials=box.seal_json(secrets) if secrets else None,
    )
    with unique_as_conflict(session, "connections", {"name": body.name}, "connection"):
        return created(session, response, conn, read, "/connections")


@router.get(
    "/connections/{connection_id}",
    response_model=ConnectionRead,
    summary="A connection, its health and metrics",
)
def get_connection(connection_id: ConnectionId, session: SessionDep) -> ConnectionRead:
    return read(get_or_404(session, Connection, connection_id))


@router.patch(
    "/connections/{connection_id}",
    response_model=ConnectionRead,
    summary="Change a connection",
    description="Sending `credentials` replaces the stored ones; changing `auth_type` needs the new type's "
    "credentials unless it is `none`. Admin only.",
    dependencies=ADMIN,
)
def update_connection(
    connection_id: ConnectionId, body: ConnectionUpdate, request: Request, session: SessionDep
) -> ConnectionRead:
    conn = get_or_404(session, Connection, connection_id)
    changes = body.model_dump(exclude_unset=True, exclude={"credentials"})
    for name, value in changes.items():
        if value is None and name not in ("description", "rate_limit_per_minute", "api_key_header"):
            raise field_problem(name, "may not be null")
    if "base_url" in changes:
        _check_egress(request, changes["base_url"], "base_url")
    box: SecretBox = request.app.state.secret_box
    auth_type = changes.get("auth_type", conn.auth_type)
    if "credentials" in body.model_fields_set:
        secrets = _plain(body.credentials)
    elif auth_type != conn.auth_type:
        secrets = {}  # the old type's secrets do not fit the new one
    else:
        try:
            secrets = box.open_json(conn.credentials) if conn.credentials else {}
        except UnreadableSecret as exc:
            raise field_problem("credentials", f"{exc}; send them again") from None
    check_credentials(auth_type, secrets)
    for name, value in changes.items():
        setattr(conn, name, value)
    if auth_type != AuthType.api_key:
        conn.api_key_header = None
    conn.credentials = box.seal_json(secrets) if secrets else None
    conn.updated_at = utcnow()
    result = read(conn)
    session.commit()
    return result


@router.delete(
    "/connections/{connection_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a connection",
    dependencies=ADMIN,
    responses={409: {"description": "Sync jobs use it."}},
)
def delete_connection(connection_id: ConnectionId, session: SessionDep) -> Response:
    conn = get_or_404(session, Connection, connection_id)
    if (
        session.scalar(select(SyncJob.id).where(SyncJob.connection_id == connection_id).limit(1))
        is not None
    ):
        raise conflict(
            f"Connection {connection_id} is used by sync jobs; delete or move them first."
        )
    return deleted(session, conn)


@router.post(
    "/connections/{connection_id}/test",
    response_model=TestCallResult,
    summary="Make a test call",
    description="GETs the connection's health_path (or `path`) with its auth and timeout, and answers with what "
    "happened; the call counts in the connection's metrics. 429 when its rate limit is used up.",
    responses={429: {"description": "The connection's rate limit is used up."}},
)
async def test_connection(
    connection_id: ConnectionId, request: Request, body: TestCall | None = None
) -> Any:
    state = request.app.state
    conn = await run_in_threadpool(_existing, state.db, connection_id)
    try:
        ep = await run_in_threadpool(load_endpoint, state.db, state.secret_box, connection_id)
    except CallFailed as exc:
        return TestCallResult(ok=False, status_code=None, latency_ms=0.0, error=str(exc))
    start = utcnow()
    try:
        r = await state.caller.get(
            ep, (body.path if body and body.path else None) or conn.health_path, wait=False
        )
    except RateLimited:
        raise rate_limited_problem() from None
    except CallFailed as exc:
        return TestCallResult(
            ok=False, status_code=None, latency_ms=_ms_since(start), error=str(exc)
        )
    ok = r.status_code < 400
    return TestCallResult(
        ok=ok,
        status_code=r.status_code,
        latency_ms=_ms_since(start),
        error=None if ok else f"HTTP {r.status_code}",
    )


def _existing(db: Any, connection_id: int) -> Connection:
    with db.session(write=False) as session:
        return get_or_404(session, Connection, connection_id)


def _ms_since(start: dt.datetime) -> float:
    return round((utcnow() - start).total_seconds() * 1000, 2)
