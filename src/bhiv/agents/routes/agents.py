"""Agents: registration, status, heartbeats, deregistration, and external agents'
task claims."""

# No `from __future__ import annotations`: FastAPI must resolve these local types.

import datetime as dt
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Response, status
from sqlalchemy import select

from bhiv.agents import queue
from bhiv.agents.models import Agent, AgentKind, AgentStatus, Task, TaskStatus
from bhiv.agents.schemas import (
    AgentCreate,
    AgentRead,
    AgentUpdate,
    Capability,
    ClaimRequest,
    LeasedTask,
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
from bhiv.core.crud import apply_patch, deleted, get_or_404, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import Problem, conflict
from bhiv.core.routing import service_router

router = service_router(tags=["agents"])
AgentId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Agent ID.")]

agent_page = page_params(
    {"id": Agent.id, "name": Agent.name, "created_at": Agent.created_at}, default_sort="id"
)


def read(agent: Agent, running: int, heartbeat_timeout: float) -> AgentRead:
    online = agent.kind != AgentKind.external or (
        agent.last_heartbeat_at is not None
        and utcnow() - agent.last_heartbeat_at < dt.timedelta(seconds=heartbeat_timeout)
    )
    return AgentRead.model_validate(
        {
            **{c: getattr(agent, c) for c in AgentRead.model_fields if hasattr(agent, c)},
            "online": online,
            "running": running,
        }
    )


def _timeout(request: Request) -> float:
    timeout: float = request.app.state.settings.agents_heartbeat_timeout_seconds
    return timeout


@router.get("/agents", response_model=Page[AgentRead], summary="List agents")
def list_agents(
    request: Request,
    session: SessionDep,
    params: Annotated[PageParams, Depends(agent_page)],
    kind: Annotated[AgentKind | None, Query(description="Only this kind.")] = None,
    status_: Annotated[
        AgentStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
    capability: Annotated[
        Capability | None, Query(description="Only agents with this capability.")
    ] = None,
) -> Page[AgentRead]:
    stmt = select(Agent)
    if kind is not None:
        stmt = stmt.where(Agent.kind == kind)
    if status_ is not None:
        stmt = stmt.where(Agent.status == status_)
    if capability is not None:
        ids = [a.id for a in session.scalars(select(Agent)) if capability in a.capabilities]
        stmt = stmt.where(Agent.id.in_(ids))
    load = queue.loads(session)
    return paginate(session, stmt, params, lambda a: read(a, load.get(a.id, 0), _timeout(request)))


@router.post(
    "/agents",
    response_model=AgentRead,
    status_code=status.HTTP_201_CREATED,
    summary="Register an agent",
    responses={409: {"description": "The name is taken."}},
)
def register(
    request: Request,
    body: AgentCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> AgentRead:
    if body.kind == AgentKind.http and "admin" not in identity.roles:
        # An HTTP agent makes this service call any URL: that is an administrator's decision.
        raise Problem(403, "Registering an http agent needs the admin role.", kind="forbidden")
    now = utcnow()
    agent = Agent(
        name=body.name,
        kind=body.kind,
        status=AgentStatus.active,
        capabilities=sorted(set(body.capabilities)),
        max_concurrency=body.max_concurrency,
        config=body.config(),
        description=body.description,
        last_heartbeat_at=now if body.kind == AgentKind.external else None,
        created_at=now,
        updated_at=now,
    )
    session.add(agent)
    with unique_as_conflict(session, "agents", {"name": body.name}, "agent"):
        session.flush()
    answer = read(agent, 0, _timeout(request))
    session.commit()
    return answer


@router.get("/agents/{agent_id}", response_model=AgentRead, summary="Get an agent")
def get_agent(request: Request, agent_id: AgentId, session: SessionDep) -> AgentRead:
    agent = get_or_404(session, Agent, agent_id, "Agent")
    return read(agent, queue.loads(session).get(agent.id, 0), _timeout(request))


@router.patch(
    "/agents/{agent_id}", response_model=AgentRead, summary="Pause, resume or resize an agent"
)
def update_agent(
    request: Request, agent_id: AgentId, body: AgentUpdate, session: SessionDep
) -> AgentRead:
    agent = get_or_404(session, Agent, agent_id, "Agent", lock=True)
    changes = apply_patch(agent, body)
    if "capabilities" in changes:
        agent.capabilities = sorted(set(changes["capabilities"]))
    answer = read(agent, queue.loads(session).get(agent.id, 0), _timeout(request))
    session.commit()
    return answer


@router.delete(
    "/agents/{agent_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Deregister an agent",
    description="Its running tasks go back to the queue (or fail, when out of attempts).",
)
def deregister(agent_id: AgentId, session: SessionDep) -> Response:
    agent = get_or_404(session, Agent, agent_id, "Agent", lock=True)
    now = utcnow()
    for task in session.scalars(
        select(Task).where(Task.agent_id == agent.id, Task.status == TaskStatus.running)
    ):
        task.lease_expires_at = now - dt.timedelta(seconds=1)  # the engine's next tick requeues it
        task.agent_id = None
    return deleted(session, agent)


@router.post(
    "/agents/{agent_id}/heartbeat", response_model=AgentRead, summary="An external agent is alive"
)
def heartbeat(request: Request, agent_id: AgentId, session: SessionDep) -> AgentRead:
    agent = get_or_404(session, Agent, agent_id, "Agent", lock=True)
    agent.last_heartbeat_at = utcnow()
    answer = read(agent, queue.loads(session).get(agent.id, 0), _timeout(request))
    session.commit()
    return answer


@router.post(
    "/agents/{agent_id}/claim",
    response_model=list[LeasedTask],
    summary="Lease queued tasks to an external agent",
    description="Highest effective priority first (priority plus aging), up to the agent's free capacity. "
    "Each task comes with a lease token; heartbeat before the lease expires or the task is requeued.",
    responses={409: {"description": "The agent is not external or is paused."}},
)
def claim(
    request: Request, agent_id: AgentId, body: ClaimRequest, session: SessionDep
) -> list[LeasedTask]:
    agent = get_or_404(session, Agent, agent_id, "Agent", lock=True)
    if agent.kind != AgentKind.external:
        raise conflict(f"Agent {agent_id} is {agent.kind.value}; only external agents claim tasks.")
    if agent.status != AgentStatus.active:
        raise conflict(f"Agent {agent_id} is {agent.status.value}; resume it to claim tasks.")
    agent.last_heartbeat_at = utcnow()
    seconds = body.lease_seconds or request.app.state.settings.agents_task_lease_seconds
    won = dict(queue.claim(session, agent, body.max_tasks, seconds))
    session.flush()
    tasks = (
        session.scalars(select(Task).where(Task.id.in_(won)).order_by(Task.sort_key, Task.id)).all()
        if won
        else []
    )
    answer = [LeasedTask.model_validate({**_task_dict(t), "lease_token": won[t.id]}) for t in tasks]
    session.commit()
    return answer


def _task_dict(task: Task) -> dict[str, object]:
    from bhiv.agents.schemas import TaskRead

    return {name: getattr(task, name) for name in TaskRead.model_fields}
