"""Endpoints every service answers: health, readiness, info, auth check, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Depends, Request, Response
from pydantic import BaseModel, Field

from bhiv.core.auth import Identity, current_identity, require
from bhiv.core.errors import Problem
from bhiv.core.routing import service_router

router = service_router(tags=["platform"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    service: str = Field(examples=["logistics"])
    version: str = Field(examples=["0.1.0"])


class Readiness(Health):
    checks: dict[str, str] = Field(examples=[{"database": "ok"}])


class Info(BaseModel):
    name: str = Field(examples=["logistics"])
    version: str = Field(examples=["0.1.0"])
    port: int = Field(examples=[8001])
    capabilities: list[str] = Field(examples=[["inventory_management"]])
    uptime_seconds: float = Field(examples=[12.5])
    endpoint_count: int = Field(description="Operations in this service's API.", examples=[24])


class Caller(BaseModel):
    subject: str = Field(examples=["dev"])
    roles: list[str] = Field(examples=[["admin"]])
    permissions: list[str] = Field(examples=[["admin", "read", "write"]])
    method: str = Field(description="jwt or api_key", examples=["jwt"])
    tenant: str | None = None


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health(request: Request) -> Health:
    spec = request.app.state.spec
    return Health(status="ok", service=spec.name, version=spec.version)


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness: the database and other dependencies answer",
    responses={503: {"description": "A dependency is not ready."}},
)
async def ready(request: Request) -> Readiness:
    spec = request.app.state.spec
    checks: dict[str, str] = {}
    if request.app.state.db is not None:
        try:
            await asyncio.to_thread(request.app.state.db.ping)
        except Exception as exc:
            raise Problem(
                503, f"The database is not reachable ({type(exc).__name__}).", kind="not-ready"
            ) from None
        checks["database"] = "ok"
    for name, check in spec.readiness_checks.items():
        try:
            await check(request.app)
        except Exception as exc:
            raise Problem(503, f"{name} is not ready: {exc}", kind="not-ready") from None
        checks[name] = "ok"
    return Readiness(status="ok", service=spec.name, version=spec.version, checks=checks)


@router.get("/info", response_model=Info, summary="What this service is and offers")
async def info(request: Request) -> Info:
    state: Any = request.app.state
    operations = sum(len(ops) for ops in request.app.openapi()["paths"].values())
    return Info(
        name=state.spec.name,
        version=state.spec.version,
        port=state.settings.port,
        capabilities=list(state.spec.capabilities),
        uptime_seconds=round(time.monotonic() - state.started_monotonic, 3),
        endpoint_count=operations,
    )


@router.get(
    "/auth/verify",
    response_model=Caller,
    summary="Who the caller is",
    responses={401: {"description": "No valid credential."}},
)
async def verify(identity: Identity = Depends(current_identity)) -> Caller:
    return Caller(
        subject=identity.subject,
        roles=list(identity.roles),
        permissions=sorted(identity.permissions),
        method=identity.method,
        tenant=identity.tenant,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        401: {"description": "Metrics need an admin credential here (BHIV_METRICS_ACCESS=admin)."},
        403: {"description": "The credential is not an admin's."},
        404: {"description": "Metrics are not served (BHIV_METRICS_ACCESS=off)."},
    },
)
async def metrics(request: Request) -> Response:
    access = request.app.state.settings.metrics_access
    if access == "off":
        raise Problem(
            404, "Metrics are not served here (BHIV_METRICS_ACCESS=off).", kind="not-found"
        )
    if access == "admin":
        await require("admin")(await current_identity(request))
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
