"""Agent orchestration tables: agents, tasks, workflow definitions, runs, their
steps and an append-only run history."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bhiv.core.db import Timestamps, UTCDateTime, new_metadata, string_enum, utcnow
from bhiv.core.status_machine import StatusMachine


class Base(DeclarativeBase):
    metadata = new_metadata()


class AgentKind(enum.StrEnum):
    llm = "llm"  # calls the LLM service's /v1/chat/completions
    http = "http"  # POSTs the task payload to a configured URL
    service = "service"  # calls a BHIV service endpoint
    external = "external"  # pulls tasks over the API with leases and heartbeats


BUILTIN_KINDS = frozenset({AgentKind.llm, AgentKind.http, AgentKind.service})


class AgentStatus(enum.StrEnum):
    active = "active"
    paused = "paused"  # takes no new tasks; running ones finish


class TaskStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TASK_FINAL = frozenset({TaskStatus.succeeded, TaskStatus.failed, TaskStatus.cancelled})


class RunStatus(enum.StrEnum):
    running = "running"
    compensating = "compensating"
    succeeded = "succeeded"
    failed = "failed"
    compensated = "compensated"  # failed, and every completed step's compensation ran
    cancelled = "cancelled"


RUN_FINAL = frozenset(
    {RunStatus.succeeded, RunStatus.failed, RunStatus.compensated, RunStatus.cancelled}
)


_T, _R = TaskStatus, RunStatus
# The status changes each allows; the API's 409 for any other comes from bhiv.core.status_machine.
TASK_FLOW = StatusMachine(
    "Task",
    {
        _T.queued: {_T.running, _T.cancelled},
        _T.running: {_T.succeeded, _T.failed, _T.queued, _T.cancelled},
        _T.succeeded: (),
        _T.failed: (),
        _T.cancelled: (),
    },
)
# A compensating run finishes its saga: it cannot be cancelled half-way.
RUN_FLOW = StatusMachine(
    "Run",
    {
        _R.running: {_R.compensating, _R.succeeded, _R.failed, _R.cancelled},
        _R.compensating: {_R.compensated, _R.failed},
        _R.succeeded: (),
        # Operations on a failed run: retry from its failed steps, or compensate it.
        _R.failed: {_R.running, _R.compensating},
        _R.compensated: (),
        _R.cancelled: (),
    },
)


class StepStatus(enum.StrEnum):
    pending = "pending"  # not started, or waiting for its next retry
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    compensated = "compensated"
    compensation_failed = "compensation_failed"


class Agent(Timestamps, Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[AgentKind] = mapped_column(string_enum(AgentKind, "agent_kind"))
    status: Mapped[AgentStatus] = mapped_column(
        string_enum(AgentStatus, "agent_status"), default=AgentStatus.active
    )
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_concurrency: Mapped[int] = mapped_column(Integer, default=1)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str | None] = mapped_column(Text)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Task(Timestamps, Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_status_sort_key", "status", "sort_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capability: Mapped[str] = mapped_column(String(100), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # Queue order, ascending: enqueue time (epoch seconds) minus priority x aging
    # seconds. Waiting `aging` seconds is worth one priority point, so an old
    # low-priority task eventually precedes any newer one (no starvation).
    sort_key: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[TaskStatus] = mapped_column(
        string_enum(TaskStatus, "task_status"), default=TaskStatus.queued
    )
    agent_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    timeout_seconds: Mapped[float] = mapped_column(Float, default=60.0)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    workflow_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="SET NULL"), index=True
    )
    step_id: Mapped[str | None] = mapped_column(String(64))
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    enqueued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WorkflowDefinition(Timestamps, Base):
    __tablename__ = "workflow_definitions"
    __table_args__ = (UniqueConstraint("name", "version", name="name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(20), default="api")  # "builtin" (shipped) or "api"
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)


class WorkflowRun(Timestamps, Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (Index("ix_workflow_runs_status_lease", "status", "lease_expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("workflow_definitions.id"), index=True)
    workflow: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[RunStatus] = mapped_column(
        string_enum(RunStatus, "run_status"), default=RunStatus.running
    )
    input: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The W3C traceparent of the request that started the run (NULL with tracing off):
    # its steps, run later by the engine, are spans of that request's trace.
    traceparent: Mapped[str | None] = mapped_column(String(55))


class StepRun(Timestamps, Base):
    __tablename__ = "step_runs"
    __table_args__ = (UniqueConstraint("run_id", "step_id", name="run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True
    )
    step_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(20))
    status: Mapped[StepStatus] = mapped_column(
        string_enum(StepStatus, "step_status"), default=StepStatus.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # Running wait steps: when the wait ends. Pending steps: when the next retry may start.
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    task_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    compensated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RunEvent(Base):
    """Append-only history of a run: each step start, success, failure, retry, skip, compensation."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    step_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[Any | None] = mapped_column(JSON)


class TriggerKind(enum.StrEnum):
    event = "event"  # a domain event delivered by the integrations service
    webhook = "webhook"  # an inbound webhook from a named source, relayed by integrations
    schedule = "schedule"  # a cron expression in a time zone


class CatchUp(enum.StrEnum):
    skip = "skip"  # ticks missed while nothing evaluated them are dropped
    run_once = "run_once"  # missed ticks start one run between them


class Overlap(enum.StrEnum):
    skip = "skip"  # a tick while the trigger's last run is still active starts nothing
    allow = "allow"  # every tick starts a run
    buffer_one = "buffer_one"  # one tick waits for the active run to finish; more are dropped


class Trigger(Timestamps, Base):
    """Starts a workflow version when its event, webhook or schedule tick arrives."""

    __tablename__ = "triggers"
    __table_args__ = (Index("ix_triggers_kind_enabled", "kind", "enabled"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[TriggerKind] = mapped_column(string_enum(TriggerKind, "trigger_kind"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    workflow: Mapped[str] = mapped_column(String(100))
    version: Mapped[int | None] = mapped_column(Integer)  # None: the latest at each start
    input: Mapped[Any] = mapped_column(JSON, default=dict)  # a template over the event or tick
    # event: the event type; webhook: the integrations webhook source's name.
    event_type: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(String(64))
    # schedule
    cron: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    catch_up: Mapped[CatchUp] = mapped_column(
        string_enum(CatchUp, "trigger_catch_up"), default=CatchUp.skip
    )
    overlap: Mapped[Overlap] = mapped_column(
        string_enum(Overlap, "trigger_overlap"), default=Overlap.skip
    )
    next_fire_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    buffered_tick: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    last_fired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_run_id: Mapped[int | None] = mapped_column(Integer)


class TriggerFiring(Base):
    """One event, webhook or tick that started (or was refused for) a trigger's run.

    Unique per (trigger, dedup key) and inserted in the run's own transaction: a
    redelivered event, or a second replica evaluating the same tick, finds the row
    and starts nothing."""

    __tablename__ = "trigger_firings"
    __table_args__ = (UniqueConstraint("trigger_id", "dedup_key", name="trigger_dedup"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trigger_id: Mapped[int] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"))
    dedup_key: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="SET NULL"), index=True
    )
    # Why no run started: the input mapping failed, the workflow is gone, or the overlap policy.
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunSignal(Base):
    """A signal sent to a run: kept until a ``wait`` step for its name takes it (oldest first).

    A signal that arrives before the run reaches its wait is kept, not lost; a step takes
    one signal, and a second signal of the same name waits for the next such step.
    """

    __tablename__ = "run_signals"
    __table_args__ = (Index("ix_run_signals_pending", "run_id", "name", "taken_by_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    payload: Mapped[Any | None] = mapped_column(JSON)
    sent_by: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    taken_by_step: Mapped[str | None] = mapped_column(String(64))
    taken_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
