"""The durable workflow engine: its loop, and the leases by which replicas share work.

One background loop per replica (a lifespan hook). Each tick it fires due
schedule triggers (``triggers``, ``schedules``), requeues
expired task leases, hands queued tasks to built-in agents, and claims
workflow runs (a lease per run, taken with ``FOR UPDATE SKIP LOCKED``, so
replicas share the work and a dead replica's runs move on once their lease
lapses), driving each claimed run one pass at a time. A task beside the loop
renews the leases of every run held here, so a live replica never loses one.

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
from bhiv.core.db import Database, utcnow

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
        # Lease renewal has a worker thread of its own: it never queues behind the
        # steps' database work in the shared thread pool.
        self.lease_limiter = anyio.CapacityLimiter(1)
        # Lease tokens of the tasks built-in agents are running here (renewed with the runs).
        self.leased_tasks: set[str] = set()
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
        renewals = asyncio.create_task(self.keep_leases(stop))
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    log.exception("engine tick failed")
                # `wake` (set when work arrives over the API) ends the pause early.
                await sleep_unless_stopped(self.wake, self.settings.agents_poll_interval_seconds)
                self.wake.clear()
        finally:
            renewals.cancel()
            await asyncio.gather(renewals, return_exceptions=True)

    async def tick(self) -> None:
        await self.fire_schedules()
        await self.db_call(self._expire)
        for assignment in await self.db_call(self._dispatch):
            self.leased_tasks.add(assignment.token)
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
        tasks = list(self.leased_tasks)
        pending = [*self.drivers.values(), *self.executions]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.db_call(self._release, tasks)
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
            return queue.dispatch_builtin(s, self.settings.agents_run_lease_seconds)

    def _claim_runs(self) -> list[int]:
        """Take runs nobody holds (or whose holder's lease lapsed), up to this replica's
        share, and return every run this replica holds.

        PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so replicas claiming at once each take
        different rows and never wait on one another; SQLite serialises writers (the
        write session begins IMMEDIATE), where the clause is left out."""
        now = utcnow()
        active = (RunStatus.running, RunStatus.compensating)
        free = or_(WorkflowRun.lease_expires_at.is_(None), WorkflowRun.lease_expires_at < now)
        mine = select(WorkflowRun.id).where(
            WorkflowRun.status.in_(active), WorkflowRun.lease_owner == self.owner
        )
        with self.db.session(write=False) as s:
            held = list(s.scalars(mine.order_by(WorkflowRun.id)))
            room = self.settings.agents_max_active_runs - len(held)
            if (
                room <= 0
                or s.scalar(
                    select(WorkflowRun.id).where(WorkflowRun.status.in_(active), free).limit(1)
                )
                is None
            ):
                return held
        until = now + dt.timedelta(seconds=self.settings.agents_run_lease_seconds)
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(WorkflowRun.id)
                    .where(WorkflowRun.status.in_(active), free)
                    .order_by(WorkflowRun.id)
                    .limit(room)
                    .with_for_update(skip_locked=True)
                )
            )
            if ids:
                s.execute(
                    update(WorkflowRun)
                    .where(WorkflowRun.id.in_(ids))
                    .values(lease_owner=self.owner, lease_expires_at=until)
                )
                s.commit()
        return sorted({*held, *ids})

    def _renew(self) -> None:
        """Extend the lease on every run this replica holds, however many, and on the
        tasks its built-in agents are running."""
        until = utcnow() + dt.timedelta(seconds=self.settings.agents_run_lease_seconds)
        with self.db.session() as s:
            s.execute(
                update(WorkflowRun)
                .where(
                    WorkflowRun.lease_owner == self.owner,
                    WorkflowRun.status.in_((RunStatus.running, RunStatus.compensating)),
                )
                .values(lease_expires_at=until)
            )
            queue.renew(s, list(self.leased_tasks), until)
            s.commit()

    async def keep_leases(self, stop: asyncio.Event) -> None:
        """Renew run and task leases three times a lease, apart from the tick: a long
        step, a slow tick or a busy thread pool must not let a lease lapse while the work
        is done here (another replica would do it again)."""
        every = self.settings.agents_run_lease_seconds / 3
        while not await sleep_unless_stopped(stop, every):
            try:
                await anyio.to_thread.run_sync(self._renew, limiter=self.lease_limiter)
            except Exception:
                log.exception("renewing run leases failed")

    def _release(self, tasks: list[str]) -> None:
        """Give up this replica's run leases, and let its tasks' leases lapse now (the
        next tick of any replica requeues them)."""
        with self.db.session() as s:
            s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            queue.renew(s, tasks, utcnow())
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
