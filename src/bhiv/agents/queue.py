"""The task queue: priority with aging, least-loaded routing, leases.

Every state change is a guarded ``UPDATE ... WHERE status = <expected>`` whose
row count says whether this caller won, so replicas and concurrent requests
never both take one task (SQLite serialises writers; PostgreSQL re-checks the
WHERE clause after a concurrent update).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bhiv.agents.models import BUILTIN_KINDS, Agent, AgentStatus, Task, TaskStatus
from bhiv.core.db import rows_changed, utcnow


def sort_key(enqueued_at: dt.datetime, priority: int, aging_seconds: float) -> float:
    """Queue position (ascending): each ``aging_seconds`` waited is worth one priority point."""
    return enqueued_at.timestamp() - priority * aging_seconds


def loads(session: Session) -> dict[int, int]:
    """Running tasks per agent."""
    rows = session.execute(
        select(Task.agent_id, func.count())
        .where(Task.status == TaskStatus.running, Task.agent_id.is_not(None))
        .group_by(Task.agent_id)
    ).all()
    return {agent_id: n for agent_id, n in rows if agent_id is not None}


def least_loaded(agents: list[Agent], capability: str, load: dict[int, int]) -> Agent | None:
    """The capable agent with the lowest load relative to its capacity, if any has room."""
    best: tuple[float, int, Agent] | None = None
    for agent in agents:
        running = load.get(agent.id, 0)
        if capability not in agent.capabilities or running >= agent.max_concurrency:
            continue
        key = (running / agent.max_concurrency, running, agent)
        if best is None or key[:2] < best[:2]:
            best = key
    return best[2] if best else None


def _lease(task_id: int, agent_id: int, seconds: float, now: dt.datetime) -> Any:
    token = secrets.token_hex(16)
    stmt = (
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.queued)
        .values(
            status=TaskStatus.running,
            agent_id=agent_id,
            attempts=Task.attempts + 1,
            lease_token=token,
            lease_expires_at=now + dt.timedelta(seconds=seconds),
            started_at=now,
            updated_at=now,
        )
    )
    return stmt, token


@dataclass(frozen=True)
class Assignment:
    task_id: int
    token: str
    agent_id: int
    agent_name: str
    kind: str
    config: dict[str, Any]
    payload: dict[str, Any]
    timeout: float


def dispatch_builtin(session: Session, lease_seconds: float, batch: int = 200) -> list[Assignment]:
    """Hand queued tasks to built-in agents, least-loaded first; commits.

    The replica renews the lease while it runs the task (``renew``), so the lease
    is short and a crashed replica's tasks are requeued within ``lease_seconds``."""
    agents = list(
        session.scalars(
            select(Agent)
            .where(Agent.status == AgentStatus.active, Agent.kind.in_(BUILTIN_KINDS))
            .order_by(Agent.id)
            # Replicas dispatching at once take turns, so none overfills an agent.
            .with_for_update()
        )
    )
    if not agents:
        return []
    capabilities = {c for a in agents for c in a.capabilities}
    load = loads(session)
    now = utcnow()
    queued = session.scalars(
        select(Task)
        .where(Task.status == TaskStatus.queued, Task.capability.in_(capabilities))
        .order_by(Task.sort_key, Task.id)
        .limit(batch)
    ).all()
    out: list[Assignment] = []
    for task in queued:
        agent = least_loaded(agents, task.capability, load)
        if agent is None:
            continue
        stmt, token = _lease(task.id, agent.id, lease_seconds, now)
        if rows_changed(session.execute(stmt)) != 1:
            continue
        load[agent.id] = load.get(agent.id, 0) + 1
        out.append(
            Assignment(
                task.id,
                token,
                agent.id,
                agent.name,
                agent.kind.value,
                dict(agent.config),
                dict(task.payload),
                task.timeout_seconds,
            )
        )
    session.commit()
    return out


def claim(
    session: Session, agent: Agent, max_tasks: int, lease_seconds: float
) -> list[tuple[int, str]]:
    """Lease up to ``max_tasks`` queued tasks (within the agent's free capacity) to an external agent.

    The caller commits.
    """
    now = utcnow()
    room = agent.max_concurrency - loads(session).get(agent.id, 0)
    want = min(max_tasks, room)
    if want <= 0 or not agent.capabilities:
        return []
    candidates = session.scalars(
        select(Task.id)
        .where(Task.status == TaskStatus.queued, Task.capability.in_(agent.capabilities))
        .order_by(Task.sort_key, Task.id)
        .limit(want * 4)
    ).all()
    won: list[tuple[int, str]] = []
    for task_id in candidates:
        if len(won) >= want:
            break
        stmt, token = _lease(task_id, agent.id, lease_seconds, now)
        if rows_changed(session.execute(stmt)) == 1:
            won.append((task_id, token))
    return won


def finish(
    session: Session,
    task_id: int,
    token: str,
    *,
    result: Any = None,
    error: str | None = None,
    retryable: bool = False,
) -> TaskStatus | None:
    """Record a leased task's outcome; None if the lease was lost (requeued, cancelled). The caller commits.

    A retryable failure with attempts left goes back to the queue.
    """
    task = session.get(Task, task_id, with_for_update=True, populate_existing=True)
    if task is None or task.status != TaskStatus.running or task.lease_token != token:
        return None
    now = utcnow()
    if error is not None and retryable and task.attempts < task.max_attempts:
        _requeue(task, error, now)
        return TaskStatus.queued
    task.result = result if error is None else None
    task.error = error
    _close(task, TaskStatus.failed if error is not None else TaskStatus.succeeded, now)
    return task.status


def _close(task: Task, status: TaskStatus, now: dt.datetime) -> None:
    """A final status: the lease ends with it."""
    task.status = status
    task.finished_at = now
    task.lease_token = None
    task.lease_expires_at = None
    task.updated_at = now


def _requeue(task: Task, error: str, now: dt.datetime) -> None:
    task.status = TaskStatus.queued
    task.agent_id = None
    task.lease_token = None
    task.lease_expires_at = None
    task.error = error
    task.updated_at = now


def renew(session: Session, tokens: list[str], until: dt.datetime) -> None:
    """Extend the leases of running tasks held by ``tokens``; the caller commits."""
    if tokens:
        session.execute(
            update(Task)
            .where(Task.status == TaskStatus.running, Task.lease_token.in_(tokens))
            .values(lease_expires_at=until)
        )


def expire_leases(session: Session) -> int:
    """Requeue (or fail, when out of attempts) running tasks whose lease has lapsed; commits."""
    now = utcnow()
    expired = session.scalars(
        select(Task)
        .where(Task.status == TaskStatus.running, Task.lease_expires_at < now)
        .with_for_update()
    ).all()
    for task in expired:
        message = f"lease expired on attempt {task.attempts} (agent {task.agent_id})"
        if task.attempts < task.max_attempts:
            _requeue(task, message, now)
        else:
            task.error = message
            _close(task, TaskStatus.failed, now)
    session.commit()
    return len(expired)


def cancel(session: Session, task: Task) -> bool:
    """Cancel a queued or running task (a running one's late result is then ignored). The caller commits."""
    if task.status in (TaskStatus.queued, TaskStatus.running):
        _close(task, TaskStatus.cancelled, utcnow())
        return True
    return False
