"""Per-agent, per-workflow and per-queue figures, for the API and for /metrics.

Computed from the database, so every replica reports the same numbers and
nothing is lost on restart. Latencies are over the most recent finished items
(``WINDOW`` per agent or workflow).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bhiv.agents.models import Agent, RunStatus, Task, TaskStatus, WorkflowRun
from bhiv.agents.schemas import AgentStats, Overview, QueueStats, WorkflowStats
from bhiv.core.db import utcnow
from bhiv.core.metrics import DatabaseCollector

WINDOW = 1000


def _latencies(rows: Sequence[tuple[Any, Any]]) -> tuple[float | None, float | None]:
    values = sorted((end - start).total_seconds() for start, end in rows if start and end)
    if not values:
        return None, None
    p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
    return sum(values) / len(values), p95


def _rate(ok: int, bad: int) -> float | None:
    return ok / (ok + bad) if ok + bad else None


def overview(session: Session) -> Overview:
    counts: dict[tuple[Any, Any], int] = {
        (a, s): n
        for a, s, n in session.execute(
            select(Task.agent_id, Task.status, func.count())
            .where(Task.agent_id.is_not(None))
            .group_by(Task.agent_id, Task.status)
        )
    }
    agents = []
    for agent in session.scalars(select(Agent).order_by(Agent.id)):
        recent = session.execute(
            select(Task.started_at, Task.finished_at)
            .where(Task.agent_id == agent.id, Task.finished_at.is_not(None))
            .order_by(Task.finished_at.desc())
            .limit(WINDOW)
        ).all()
        avg, p95 = _latencies(recent)
        ok = counts.get((agent.id, TaskStatus.succeeded), 0)
        bad = counts.get((agent.id, TaskStatus.failed), 0)
        agents.append(
            AgentStats(
                agent_id=agent.id,
                name=agent.name,
                running=counts.get((agent.id, TaskStatus.running), 0),
                succeeded=ok,
                failed=bad,
                success_rate=_rate(ok, bad),
                latency_avg_seconds=avg,
                latency_p95_seconds=p95,
            )
        )
    run_counts: dict[str, dict[RunStatus, int]] = defaultdict(dict)
    for name, status, n in session.execute(
        select(WorkflowRun.workflow, WorkflowRun.status, func.count()).group_by(
            WorkflowRun.workflow, WorkflowRun.status
        )
    ):
        run_counts[name][status] = n
    workflows = []
    for name in sorted(run_counts):
        c = run_counts[name]
        recent = session.execute(
            select(WorkflowRun.started_at, WorkflowRun.finished_at)
            .where(WorkflowRun.workflow == name, WorkflowRun.finished_at.is_not(None))
            .order_by(WorkflowRun.finished_at.desc())
            .limit(WINDOW)
        ).all()
        avg, p95 = _latencies(recent)
        ok = c.get(RunStatus.succeeded, 0)
        bad = c.get(RunStatus.failed, 0) + c.get(RunStatus.compensated, 0)
        workflows.append(
            WorkflowStats(
                workflow=name,
                running=c.get(RunStatus.running, 0) + c.get(RunStatus.compensating, 0),
                compensated=c.get(RunStatus.compensated, 0),
                succeeded=ok,
                failed=bad,
                success_rate=_rate(ok, bad),
                latency_avg_seconds=avg,
                latency_p95_seconds=p95,
            )
        )
    now = utcnow()
    queues: dict[str, QueueStats] = {}
    for capability, task_status, n in session.execute(
        select(Task.capability, Task.status, func.count())
        .where(Task.status.in_((TaskStatus.queued, TaskStatus.running)))
        .group_by(Task.capability, Task.status)
    ):
        q = queues.setdefault(
            capability,
            QueueStats(capability=capability, queued=0, running=0, oldest_wait_seconds=None),
        )
        if task_status == TaskStatus.queued:
            q.queued = n
            oldest = session.scalar(
                select(Task.enqueued_at)
                .where(Task.capability == capability, Task.status == TaskStatus.queued)
                .order_by(Task.enqueued_at)
                .limit(1)
            )
            q.oldest_wait_seconds = max(0.0, (now - oldest).total_seconds()) if oldest else None
        else:
            q.running = n
    return Overview(agents=agents, workflows=workflows, queues=[queues[k] for k in sorted(queues)])


class OrchestrationCollector(DatabaseCollector):
    """Prometheus figures read from the database at scrape time."""

    def collect(self) -> Iterator[Any]:
        with self.db.session(write=False) as session:
            o = overview(session)
        tasks = CounterMetricFamily(
            "bhiv_agent_tasks", "Tasks finished, by agent and outcome.", labels=["agent", "outcome"]
        )
        running = GaugeMetricFamily(
            "bhiv_agent_tasks_running", "Tasks running, by agent.", labels=["agent"]
        )
        rate = GaugeMetricFamily(
            "bhiv_agent_success_ratio", "Succeeded / finished tasks, by agent.", labels=["agent"]
        )
        latency = GaugeMetricFamily(
            "bhiv_agent_task_latency_avg_seconds",
            "Mean task run time (recent), by agent.",
            labels=["agent"],
        )
        for a in o.agents:
            tasks.add_metric([a.name, "succeeded"], a.succeeded)
            tasks.add_metric([a.name, "failed"], a.failed)
            running.add_metric([a.name], a.running)
            if a.success_rate is not None:
                rate.add_metric([a.name], a.success_rate)
            if a.latency_avg_seconds is not None:
                latency.add_metric([a.name], a.latency_avg_seconds)
        runs = CounterMetricFamily(
            "bhiv_workflow_runs",
            "Workflow runs finished, by workflow and outcome.",
            labels=["workflow", "outcome"],
        )
        wf_running = GaugeMetricFamily(
            "bhiv_workflow_runs_running", "Runs in progress, by workflow.", labels=["workflow"]
        )
        wf_rate = GaugeMetricFamily(
            "bhiv_workflow_success_ratio",
            "Succeeded / finished runs, by workflow.",
            labels=["workflow"],
        )
        wf_latency = GaugeMetricFamily(
            "bhiv_workflow_run_duration_avg_seconds",
            "Mean run duration (recent).",
            labels=["workflow"],
        )
        for w in o.workflows:
            runs.add_metric([w.workflow, "succeeded"], w.succeeded)
            runs.add_metric([w.workflow, "failed"], w.failed - w.compensated)
            runs.add_metric([w.workflow, "compensated"], w.compensated)
            wf_running.add_metric([w.workflow], w.running)
            if w.success_rate is not None:
                wf_rate.add_metric([w.workflow], w.success_rate)
            if w.latency_avg_seconds is not None:
                wf_latency.add_metric([w.workflow], w.latency_avg_seconds)
        depth = GaugeMetricFamily(
            "bhiv_task_queue_depth", "Queued tasks, by capability.", labels=["capability"]
        )
        for q in o.queues:
            depth.add_metric([q.capability], q.queued)
        yield from (tasks, running, rate, latency, runs, wf_running, wf_rate, wf_latency, depth)
