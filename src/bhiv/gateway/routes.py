"""The gateway's own endpoints: the service registry, tokens, the aggregated OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bhiv.core.auth import require
from bhiv.core.errors import Problem
from bhiv.core.routing import service_router
from bhiv.gateway.edge import limited, too_many
from bhiv.gateway.ratelimit import rate_limit_headers

router = service_router(tags=["gateway"])


async def limit_by_address(request: Request, response: Response) -> None:
    """The per-IP bucket of the gateway's own endpoints, taken before any credential is checked.

    Routed requests take it in the edge; these endpoints (``/services``,
    ``/batch``, ``/auth/token``) check credentials too, so guessing one there
    costs the same as anywhere else.
    """
    gateway = request.app.state.gateway
    decision = await gateway.limiter.take(
        "ip", request.client.host if request.client else "unknown"
    )
    request.state.rate_limits = [decision] if decision is not None else []
    if decision is None:
        return
    if not decision.allowed:
        raise limited(too_many("your address"), request.state.rate_limits)
    for name, value in rate_limit_headers(request.state.rate_limits):
        response.headers[name.decode()] = value.decode()


class InstanceView(BaseModel):
    url: str = Field(examples=["http://127.0.0.1:8001"])
    health: str = Field(
        description="unknown (not probed yet), healthy or unhealthy.", examples=["healthy"]
    )
    available: bool = Field(
        description="In rotation: not unhealthy, not ejected, not marked unready."
    )
    ejected: bool
    ejected_for_seconds: float
    last_check: str | None = Field(None, description="When the last probe ran (UTC).")
    last_error: str | None = None
    outstanding: int = Field(description="Requests in flight to this instance.")
    platform_ready: bool | None = Field(
        None, description="Kubernetes' Ready condition, when discovered there."
    )


class ServiceView(BaseModel):
    name: str = Field(examples=["logistics"])
    prefix: str = Field(examples=["/api/logistics"])
    status: str = Field(description="up, degraded (some instances out) or down.", examples=["up"])
    capabilities: list[str]
    load_balancer: str = Field(examples=["round_robin"])
    breaker: dict[str, Any] = Field(examples=[{"state": "closed", "failures": 0}])
    instances: list[InstanceView]


class ConditionView(BaseModel):
    type: str | None = Field(None, examples=["Ready"])
    status: str | None = Field(None, examples=["True"])
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


class ModuleView(BaseModel):
    """A BhivModule as the operator reports it (Kubernetes discovery only)."""

    name: str = Field(examples=["logistics"])
    service: str | None = Field(None, examples=["logistics"])
    image: str | None = Field(None, examples=["bhiv-core:0.1.0"])
    replicas: int | None = Field(None, description="Desired (spec.replicas).")
    paused: bool = False
    dependsOn: list[str] = Field(default_factory=list, examples=[["llm-query"]])
    readyReplicas: int | None = None
    replicasReady: str | None = Field(None, examples=["1/1"])
    waitingFor: list[str] = Field(default_factory=list, description="Dependencies not Ready yet.")
    url: str | None = None
    conditions: list[ConditionView] = Field(default_factory=list)


class RegistryView(BaseModel):
    discovery: str = Field(description="local or kubernetes.", examples=["local"])
    rate_limit_backend: str = Field(examples=["memory"])
    services: list[ServiceView]
    modules: list[ModuleView] | None = Field(
        None,
        description="Kubernetes discovery: every BhivModule of the namespace, gateway included "
        "(conditions, waitingFor, replicas, dependsOn); null with local discovery.",
    )


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = Field("Bearer", examples=["Bearer"])
    expires_in: int = Field(description="Seconds the token is valid.", examples=[900])
    roles: list[str] = Field(examples=[["viewer"]])


@router.get(
    "/services",
    response_model=RegistryView,
    summary="Routed services, their instances and health",
    dependencies=[Depends(require("read"))],
    responses={401: {"description": "No valid credential."}},
)
async def services(request: Request) -> RegistryView:
    gateway = request.app.state.gateway
    views = []
    for svc in gateway.registry.describe():
        views.append(ServiceView(**svc, breaker=gateway.forwarder.breaker_state(svc["name"])))
    modules = None
    if gateway.modules is not None:
        modules = [ModuleView(**m) for m in gateway.modules()]
    return RegistryView(
        discovery=gateway.settings.gateway_discovery,
        rate_limit_backend=gateway.limiter.backend,
        services=views,
        modules=modules,
    )


@router.post(
    "/auth/token",
    response_model=TokenResponse,
    summary="Exchange an API key for a short-lived JWT",
    responses={
        401: {"description": "No API key, or not a valid one."},
        429: {"description": "Too many attempts."},
    },
)
async def token(
    request: Request,
    response: Response,
    x_api_key: Annotated[
        str | None, Header(alias="X-API-Key", description="The API key to exchange.")
    ] = None,
) -> TokenResponse:
    gateway = request.app.state.gateway
    # Taken by limit_by_address: this is where keys get guessed.
    limits = request.state.rate_limits
    if not x_api_key:
        raise limited(
            Problem(
                401,
                "Send the API key to exchange in the X-API-Key header.",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="bhiv"'},
            ),
            limits,
        )
    try:
        identity = gateway.edge.auth.authenticate(None, x_api_key)
    except Problem as problem:
        raise limited(problem, limits) from None
    ttl = gateway.settings.gateway_token_ttl_seconds
    response.headers["Cache-Control"] = "no-store"
    return TokenResponse(
        access_token=gateway.edge.auth.mint(identity, ttl),
        expires_in=ttl,
        roles=list(identity.roles),
    )


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    gateway = request.app.state.gateway
    return JSONResponse(await gateway.openapi.document(request.app.openapi()))
