"""The durable workflow engine: its loop, and the leases by which replicas share work.

One background loop per replica (a lifespan hook). Each tick it fires due
schedule triggers (``triggers``, ``schedules``), requeues
expired task leases, hands queued tasks to built-in agents, and claims
workflow runs (a lease per run, so replicas share the work and a dead
replica's runs move on once their lease lapses), driving each claimed run
one pass at a time.

The parts, one job each: ``runs`` drives a run through a pass and settles it;
``executors`` runs one step, and the built-in agents' tasks; ``sagas`` runs
compensations; ``transitions`` is the one guarded transaction every change to
a run or step goes through.

Durability: every step transition (started, succeeded, failed, retry
scheduled, skipped, compensated) is committed before the engine does anything
that depends on it, together with a row of the run's history. A step whose
result is committed is never run again; a step that was in flight when the
process stopped is run again on resume (at-least-once, as in Temporal), so
service steps should be idempotent or carry a unique reference.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import or_, select, update

from bhiv.agents import queue, triggers
from bhiv.agents.calls import ServiceCaller
from bhiv.agents.definitions import Step
from bhiv.agents.executors import BuiltinAgents, StepExecutor
from bhiv.agents.models import RunStatus, Task, TaskStatus, WorkflowRun
from bhiv.agents.runs import RunDriver
from bhiv.agents.sagas import Sagas
from bhiv.agents.settings import AgentsSettings
from bhiv.agents.transitions import Transitions
from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.db import Database, rows_changed, utcnow

log = logging.getLogger("bhiv.agents.engine")


class WorkflowEngine:
    def __init__(self, app: FastAPI) -> None:
        self.settings: AgentsSettings = app.state.settings
        self.db: Database = app.state.db
        self.caller = ServiceCaller(self.settings)
        self.owner = uuid.uuid4().hex
        self.drivers: dict[int, asyncio.Task[None]] = {}
        self.executions: set[asyncio.Task[None]] = set()
        # Steps being executed by this process, so a pass neither starts one twice nor
        # mistakes one for a step orphaned by a restart.
        self.inflight: set[tuple[int, str]] = set()
        self.wake = asyncio.Event()
        # The time schedules are evaluated against; a test may set a controlled clock.
        self.clock: Callable[[], dt.datetime] = utcnow
        self.transitions = Transitions(self.db, self.owner, self.settings)
        self.runs = RunDriver(self)
        self.steps = StepExecutor(self)
        self.agents = BuiltinAgents(self)
        self.sagas = Sagas(self)

    async def db_call(self, fn: Any, *args: Any) -> Any:
        """Blocking database work runs in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start work the engine cancels on stop."""
        t = asyncio.create_task(coro)
        self.executions.add(t)
        t.add_done_callback(self.executions.discard)

    async def fail(
        self, run_id: int, step: Step, error: str, retryable: bool, final: bool = False
    ) -> None:
        if await self.db_call(self.transitions.fail, run_id, step, error, retryable, final):
            self.wake.set()

    # --- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("engine tick failed")
            # `wake` (set when work arrives over the API) ends the pause early.
            await sleep_unless_stopped(self.wake, self.settings.agents_poll_interval_seconds)
            self.wake.clear()

    async def tick(self) -> None:
        await self.fire_schedules()
        await self.db_call(self._expire)
        for assignment in await self.db_call(self._dispatch):
            self.spawn(self.agents.execute(assignment))
        for run_id in await self.db_call(self._claim_runs):
            driver = self.drivers.get(run_id)
            if driver is None or driver.done():
                self.drivers[run_id] = asyncio.create_task(self.runs.drive(run_id))
        for run_id in [r for r, d in self.drivers.items() if d.done()]:
            del self.drivers[run_id]

    async def fire_schedules(self) -> None:
        """Start the runs of schedule triggers whose tick has come (exactly once per tick:
        bhiv.agents.triggers claims each tick with a guarded UPDATE and a unique firing row)."""
        now = self.clock()
        for trigger_id in await self.db_call(triggers.due_schedules, self.db, now):
            await self.db_call(triggers.evaluate_schedule, self.db, trigger_id, now)

    async def stop(self) -> None:
        pending = [*self.drivers.values(), *self.executions]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.db_call(self._release)
        await self.caller.aclose()

    # Each step first looks with a read transaction and takes the write lock
    # (SQLite: BEGIN IMMEDIATE) only when there is something to do, so an idle
    # engine never competes with the API's writers.

    def _expire(self) -> None:
        with self.db.session(write=False) as s:
            due = s.scalar(
                select(Task.id)
                .where(Task.status == TaskStatus.running, Task.lease_expires_at < utcnow())
                .limit(1)
            )
        if due is not None:
            with self.db.session() as s:
                queue.expire_leases(s)

    def _dispatch(self) -> list[queue.Assignment]:
        with self.db.session(write=False) as s:
            if s.scalar(select(Task.id).where(Task.status == TaskStatus.queued).limit(1)) is None:
                return []
        with self.db.session() as s:
            return queue.dispatch_builtin(s)

    def _claim_runs(self) -> list[int]:
        now = utcnow()
        until = now + dt.timedelta(seconds=self.settings.agents_run_lease_seconds)
        active = (RunStatus.running, RunStatus.compensating)
        claimable = or_(
            WorkflowRun.lease_owner == self.owner,
            WorkflowRun.lease_expires_at.is_(None),
            WorkflowRun.lease_expires_at < now,
        )
        with self.db.session(write=False) as s:
            ids = s.scalars(
                select(WorkflowRun.id)
                .where(WorkflowRun.status.in_(active), claimable)
                .order_by(WorkflowRun.id)
                .limit(100)
            ).all()
        if not ids:
            return []
        won = []
        with self.db.session() as s:
            for run_id in ids:
                result = s.execute(
                    update(WorkflowRun)
                    .where(WorkflowRun.id == run_id, WorkflowRun.status.in_(active), claimable)
                    .values(lease_owner=self.owner, lease_expires_at=until)
                )
                if rows_changed(result) == 1:
                    won.append(run_id)
            s.commit()
        return won

    def _release(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            s.commit()


@asynccontextmanager
async def engine_hook(app: FastAPI) -> AsyncIterator[None]:
    """Lifespan hook: the engine's loop runs for the app's lifetime."""
    engine = WorkflowEngine(app)
    app.state.engine = engine
    # grace=0: steps in flight are cancelled and released (engine.stop); another
    # replica, or this one when it starts again, takes them over.
    try:
        async with background("workflow-engine", engine.run, grace=0):
            yield
    finally:
        await engine.stop()
