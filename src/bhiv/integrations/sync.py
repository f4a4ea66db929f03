"""Data sync jobs: pull records from a connection, page by page from a saved
cursor, map their fields and upsert them into a BHIV service through its API.

Incremental (Airbyte-style): the job keeps the largest ``cursor_field`` value of
its last complete run and sends it as ``cursor_param``; the source answers with
what changed since. The cursor is saved only when a run reads every page, so a
run that fails part-way is repeated in full next time — harmless, because
upserts of unchanged records are skipped.

Conflict policy: each job remembers, per source record, the BHIV record it
became and the values it last wrote there. A record whose BHIV values differ
from those has been edited in BHIV since; if the source changed it too,
``source_wins`` overwrites the BHIV edit and ``bhiv_wins`` keeps it (the record
is skipped and counted as a conflict). docs/integrations.md has the full rules.

Runs are rows (queued → running → succeeded/failed) claimed with a lease, so a
scheduled or requested run survives a restart as a queued row, and a run whose
worker died is marked failed once its lease lapses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import httpx
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.client import ServiceClient, UpstreamError, UpstreamUnavailable
from bhiv.core.db import Database, rows_changed, utcnow
from bhiv.core.errors import Problem, conflict
from bhiv.core.service_auth import MissingServiceCredential, service_headers
from bhiv.integrations.connections import CallFailed, ConnectionCaller, Endpoint, load_endpoint
from bhiv.integrations.crypto import SecretBox
from bhiv.integrations.delivery import storable
from bhiv.integrations.models import (
    ConflictPolicy,
    RunStatus,
    RunTrigger,
    SyncJob,
    SyncLink,
    SyncRun,
)
from bhiv.integrations.settings import IntegrationsSettings
from bhiv.integrations.targets import TARGETS, SyncDestination, comparable

log = logging.getLogger("bhiv.integrations.sync")

MAX_RECORD_ERRORS = 20
ACTIVE = (RunStatus.queued, RunStatus.running)


class SyncFailed(Exception):
    """The run cannot go on; the message is stored on the run."""


class SourceHiccup(Exception):
    """A source answer worth retrying (5xx, 429)."""


_MISSING = object()


def dig(record: Any, path: str) -> Any:
    """The value at a dotted path, or ``_MISSING``."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def cursor_order(value: Any) -> tuple[int, Any]:
    """Numbers (and numeric text) compare as numbers, anything else as text."""
    if not isinstance(value, bool):
        try:
            return (0, decimal.Decimal(str(value)))
        except decimal.InvalidOperation:
            pass
    return (1, str(value))


def queue_run(session: Session, job: SyncJob, trigger: RunTrigger) -> SyncRun:
    """A queued run for ``job``, or 409 if one is already queued or running (no commit)."""
    active = session.scalar(
        select(SyncRun.id).where(SyncRun.job_id == job.id, SyncRun.status.in_(ACTIVE)).limit(1)
    )
    if active is not None:
        raise conflict(
            f"Sync job {job.id} already has run {active} queued or running.", run_id=active
        )
    run = SyncRun(
        job_id=job.id,
        trigger=trigger,
        status=RunStatus.queued,
        record_errors=[],
        queued_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


@dataclass
class Tally:
    pages: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    conflicts: int = 0
    record_errors: list[dict[str, str]] = field(default_factory=list)

    def fail(self, key: str, message: str) -> None:
        self.failed += 1
        if len(self.record_errors) < MAX_RECORD_ERRORS:
            self.record_errors.append({"key": storable(key, 255), "message": storable(message)})


@dataclass(frozen=True)
class JobView:
    """The job as it was when its run started (the run does not see later edits)."""

    id: int
    run_id: int
    source_path: str
    records_path: str
    key_field: str
    cursor_field: str | None
    cursor_param: str
    page_param: str
    next_page_path: str
    page_size_param: str | None
    page_size: int
    target: SyncDestination
    field_map: dict[str, str]
    policy: ConflictPolicy
    cursor: str | None
    endpoint: Endpoint


class SyncRunner:
    def __init__(
        self, db: Database, box: SecretBox, settings: IntegrationsSettings, caller: ConnectionCaller
    ) -> None:
        self.db, self.box, self.settings, self.caller = db, box, settings, caller
        self.services = {
            "logistics": ServiceClient("logistics", settings.logistics_url, timeout=15.0),
            "crm": ServiceClient("crm", settings.crm_url, timeout=15.0),
        }

    async def aclose(self) -> None:
        for client in self.services.values():
            await client.aclose()

    # --- database steps -----------------------------------------------------------

    def load(self, run_id: int) -> JobView | None:
        with self.db.session(write=False) as session:
            run = session.get(SyncRun, run_id)
            job = session.get(SyncJob, run.job_id) if run else None
            if run is None or job is None:
                return None
            return JobView(
                id=job.id,
                run_id=run.id,
                source_path=job.source_path,
                records_path=job.records_path,
                key_field=job.key_field,
                cursor_field=job.cursor_field,
                cursor_param=job.cursor_param,
                page_param=job.page_param,
                next_page_path=job.next_page_path,
                page_size_param=job.page_size_param,
                page_size=job.page_size,
                target=TARGETS[job.target],
                field_map=dict(job.field_map),
                policy=job.conflict_policy,
                cursor=job.cursor_value,
                endpoint=load_endpoint(self.db, self.box, job.connection_id),
            )

    def save_progress(self, run_id: int, tally: Tally) -> None:
        """Counts so far, and a longer lease: the run is alive."""
        lease = utcnow() + dt.timedelta(seconds=self.settings.sync_lease_seconds)
        with self.db.session() as session:
            session.execute(
                update(SyncRun)
                .where(SyncRun.id == run_id, SyncRun.status == RunStatus.running)
                .values(locked_until=lease, **_counts(tally))
            )
            session.commit()

    def finish(self, job: JobView, tally: Tally, *, cursor: str | None, error: str | None) -> None:
        now = utcnow()
        with self.db.session() as session:
            run = session.get(SyncRun, job.run_id)
            if run is None:  # the job was deleted meanwhile
                return
            for name, value in _counts(tally).items():
                setattr(run, name, value)
            run.status = RunStatus.failed if error else RunStatus.succeeded
            run.error = storable(error) if error else None
            run.cursor_before = job.cursor
            run.cursor_after = job.cursor if error else cursor
            run.finished_at = now
            run.locked_until = None
            sync_job = session.get(SyncJob, job.id)
            if sync_job is not None:
                sync_job.last_run_at = now
                if not error:
                    sync_job.cursor_value = cursor
            session.commit()

    def link(self, job_id: int, source_key: str) -> SyncLink | None:
        with self.db.session(write=False) as session:
            return session.scalar(
                select(SyncLink).where(SyncLink.job_id == job_id, SyncLink.source_key == source_key)
            )

    def save_link(
        self, job_id: int, source_key: str, target_id: int, written: dict[str, Any]
    ) -> None:
        with self.db.session() as session:
            link = session.scalar(
                select(SyncLink).where(SyncLink.job_id == job_id, SyncLink.source_key == source_key)
            )
            if link is None:
                session.add(
                    SyncLink(
                        job_id=job_id, source_key=source_key, target_id=target_id, written=written
                    )
                )
            else:
                link.target_id, link.written, link.synced_at = target_id, written, utcnow()
            session.commit()

    # --- the run ------------------------------------------------------------------

    async def execute(self, run_id: int) -> None:
        try:
            job = await anyio.to_thread.run_sync(self.load, run_id)
        except CallFailed as exc:
            await anyio.to_thread.run_sync(self._fail_unloaded, run_id, str(exc))
            return
        if job is None:
            return
        tally = Tally()
        try:
            cursor = await self._pull(job, tally)
        except (SyncFailed, CallFailed, MissingServiceCredential) as exc:
            reason = str(exc)
            await anyio.to_thread.run_sync(
                lambda: self.finish(job, tally, cursor=None, error=reason)
            )
            return
        except Exception:
            log.exception("sync run %s crashed", run_id)
            await anyio.to_thread.run_sync(
                lambda: self.finish(
                    job, tally, cursor=None, error="internal error; see the service log"
                )
            )
            return
        await anyio.to_thread.run_sync(lambda: self.finish(job, tally, cursor=cursor, error=None))

    def _fail_unloaded(self, run_id: int, error: str) -> None:
        with self.db.session() as session:
            session.execute(
                update(SyncRun)
                .where(SyncRun.id == run_id)
                .values(
                    status=RunStatus.failed,
                    error=storable(error),
                    finished_at=utcnow(),
                    locked_until=None,
                )
            )
            session.commit()

    async def _pull(self, job: JobView, tally: Tally) -> str | None:
        headers = service_headers(self.settings, api_key=self.settings.service_api_key)
        newest: Any = job.cursor
        token: Any = None
        seen_tokens: set[str] = set()
        while True:
            params: dict[str, Any] = {}
            if job.cursor_field and job.cursor is not None:
                params[job.cursor_param] = job.cursor
            if job.page_size_param:
                params[job.page_size_param] = job.page_size
            if token is not None:
                params[job.page_param] = token
            page = await self._fetch(job, params, tally.pages + 1)
            records = dig(page, job.records_path)
            if not isinstance(records, list):
                raise SyncFailed(
                    f"page {tally.pages + 1}: '{job.records_path}' is not a list of records"
                )
            for record in records:
                await self._upsert(job, record, tally, headers)
                if job.cursor_field and isinstance(record, dict):
                    value = dig(record, job.cursor_field)
                    if (
                        value is not _MISSING
                        and value is not None
                        and (newest is None or cursor_order(value) > cursor_order(newest))
                    ):
                        newest = value
            tally.pages += 1
            await anyio.to_thread.run_sync(self.save_progress, job.run_id, tally)
            token = dig(page, job.next_page_path)
            if token is _MISSING or token in (None, "") or not records:
                break
            if str(token) in seen_tokens:
                raise SyncFailed(f"the source repeated the page token {str(token)[:100]!r}")
            seen_tokens.add(str(token))
            if tally.pages >= self.settings.sync_max_pages:
                raise SyncFailed(
                    f"more than {self.settings.sync_max_pages} pages; raise BHIV_SYNC_MAX_PAGES"
                )
        return None if newest is None else str(newest)

    async def _fetch(self, job: JobView, params: dict[str, Any], number: int) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(initial=0.5, max=5.0, jitter=0.5),
            retry=retry_if_exception_type((CallFailed, SourceHiccup)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self.caller.get(job.endpoint, job.source_path, params)
                    if response.status_code >= 500 or response.status_code == 429:
                        raise SourceHiccup(f"HTTP {response.status_code}")
        except SourceHiccup as exc:
            raise SyncFailed(f"page {number}: the source answered {exc} three times") from None
        if response.status_code >= 400:
            raise SyncFailed(f"page {number}: the source answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise SyncFailed(f"page {number}: the source's answer is not JSON") from None

    async def _upsert(
        self, job: JobView, record: Any, tally: Tally, headers: dict[str, str]
    ) -> None:
        target = job.target
        key = dig(record, job.key_field) if isinstance(record, dict) else _MISSING
        if key is _MISSING or key is None or isinstance(key, dict | list):
            tally.fail(str(record)[:100], f"no usable '{job.key_field}' (the key field)")
            return
        source_key = str(key)[:255]
        desired = {t: v for t, s in job.field_map.items() if (v := dig(record, s)) is not _MISSING}
        client = self.services[target.service]
        try:
            await self._upsert_one(job, source_key, desired, tally, client, headers)
        except (httpx.TransportError, UpstreamError, UpstreamUnavailable) as exc:
            # The BHIV service is down: every record would fail, so stop the
            # run; the cursor stays where it was and the next run repeats it.
            raise SyncFailed(f"{target.service} is unavailable ({type(exc).__name__})") from None

    async def _upsert_one(
        self,
        job: JobView,
        source_key: str,
        desired: dict[str, Any],
        tally: Tally,
        client: ServiceClient,
        headers: dict[str, str],
    ) -> None:
        target = job.target
        link = await anyio.to_thread.run_sync(self.link, job.id, source_key)
        current: dict[str, Any] | None = None
        if link is not None:
            r = await client.get(f"{target.path}/{link.target_id}", headers=headers)
            if r.status_code == 200:
                current = r.json()
            elif r.status_code != 404:  # 404: deleted in BHIV; found again or re-created below
                tally.fail(source_key, _problem(r))
                return
        if current is None:
            current = await self._find(target, desired, client, headers)
            if current is None and link is not None:
                link = None
        if current is None:
            missing = [f for f in target.required if desired.get(f) in (None, "")]
            if missing:
                tally.fail(source_key, f"cannot create without {', '.join(missing)}")
                return
            r = await client.post(target.path, json=desired, headers=headers)
            if r.status_code != 201:
                tally.fail(source_key, _problem(r))
                return
            tally.created += 1
            await self._remember(job, source_key, r.json(), desired)
            return

        names = set(desired)
        if comparable(target, current, names) == comparable(target, desired, names):
            tally.skipped += 1
            if link is None or link.target_id != current["id"]:
                await self._remember(job, source_key, current, desired)
            return
        if link is not None and link.target_id == current["id"]:
            written = link.written
            if comparable(target, current, set(written)) != written:
                tally.conflicts += 1
                if job.policy == ConflictPolicy.bhiv_wins:
                    tally.skipped += 1
                    return
        changes = {
            n: v
            for n, v in desired.items()
            if comparable(target, {n: v}, {n}) != comparable(target, current, {n})
        }
        r = await client.request(
            "PATCH", f"{target.path}/{current['id']}", json=changes, headers=headers
        )
        if r.status_code != 200:
            tally.fail(source_key, _problem(r))
            return
        tally.updated += 1
        await self._remember(job, source_key, r.json(), desired)

    async def _find(
        self,
        target: SyncDestination,
        desired: dict[str, Any],
        client: ServiceClient,
        headers: dict[str, str],
    ) -> dict[str, Any] | None:
        """The BHIV record whose natural key equals the source's, if any."""
        value = desired.get(target.natural_key)
        if not isinstance(value, str) or not value.strip():
            return None
        r = await client.get(
            target.path, params={"q": value.strip(), "limit": 100}, headers=headers
        )
        if r.status_code != 200:
            return None
        want = comparable(target, {target.natural_key: value}, {target.natural_key})
        items: list[dict[str, Any]] = r.json().get("items", [])
        for item in items:
            if comparable(target, item, {target.natural_key}) == want:
                return item
        return None

    async def _remember(
        self, job: JobView, source_key: str, stored: dict[str, Any], desired: dict[str, Any]
    ) -> None:
        written = comparable(job.target, stored, set(desired))
        await anyio.to_thread.run_sync(
            self.save_link, job.id, source_key, int(stored["id"]), written
        )


def _counts(tally: Tally) -> dict[str, Any]:
    return {
        "pages": tally.pages,
        "created": tally.created,
        "updated": tally.updated,
        "skipped": tally.skipped,
        "failed": tally.failed,
        "conflicts": tally.conflicts,
        "record_errors": list(tally.record_errors),
    }


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {detail}" if detail else f"HTTP {response.status_code}"


class SyncScheduler:
    """Queues scheduled runs, claims queued ones and executes them, one at a time."""

    def __init__(self, db: Database, settings: IntegrationsSettings, runner: SyncRunner) -> None:
        self.db, self.settings, self.runner = db, settings, runner

    def recover(self) -> int:
        """Fail runs whose worker stopped (lease lapsed); their cursor was never saved."""
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                update(SyncRun)
                .where(SyncRun.status == RunStatus.running, SyncRun.locked_until < now)
                .values(
                    status=RunStatus.failed,
                    finished_at=now,
                    locked_until=None,
                    error="interrupted: the worker stopped during the run; the cursor was not advanced",
                )
            )
            session.commit()
            return rows_changed(result)

    def enqueue_due(self) -> None:
        now = utcnow()
        with self.db.session() as session:
            due = session.scalars(
                select(SyncJob).where(
                    SyncJob.enabled.is_(True),
                    SyncJob.interval_seconds.is_not(None),
                    SyncJob.next_run_at <= now,
                )
            ).all()
            for job in due:
                claimed = session.execute(
                    update(SyncJob)
                    .where(SyncJob.id == job.id, SyncJob.next_run_at == job.next_run_at)
                    .values(next_run_at=now + dt.timedelta(seconds=job.interval_seconds or 0))
                    .execution_options(synchronize_session=False)
                )
                if rows_changed(claimed) == 1:
                    with suppress(Problem):  # a run already active: this tick is skipped
                        with session.begin_nested():
                            queue_run(session, job, RunTrigger.schedule)
            session.commit()

    def claim(self) -> int | None:
        now = utcnow()
        with self.db.session() as session:
            run_id = session.scalar(
                select(SyncRun.id)
                .where(SyncRun.status == RunStatus.queued)
                .order_by(SyncRun.id)
                .limit(1)
            )
            if run_id is None:
                return None
            result = session.execute(
                update(SyncRun)
                .where(SyncRun.id == run_id, SyncRun.status == RunStatus.queued)
                .values(
                    status=RunStatus.running,
                    started_at=now,
                    locked_until=now + dt.timedelta(seconds=self.settings.sync_lease_seconds),
                )
            )
            session.commit()
            return run_id if rows_changed(result) == 1 else None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            run_id = None
            try:
                await anyio.to_thread.run_sync(self.recover)
                await anyio.to_thread.run_sync(self.enqueue_due)
                run_id = await anyio.to_thread.run_sync(self.claim)
                if run_id is not None:
                    await self.runner.execute(run_id)
            except Exception:
                log.exception("sync scheduler iteration failed")
            if run_id is None:
                await sleep_unless_stopped(stop, self.settings.worker_poll_seconds)


@asynccontextmanager
async def sync_scheduler(app: FastAPI) -> AsyncIterator[None]:
    """Lifespan hook: run scheduled and requested syncs until the app stops."""
    runner = SyncRunner(app.state.db, app.state.secret_box, app.state.settings, app.state.caller)
    scheduler = SyncScheduler(app.state.db, app.state.settings, runner)
    # grace=0: a run in progress is abandoned; its lease lapses and it is marked
    # interrupted, with its cursor unsaved.
    try:
        async with background("sync-scheduler", scheduler.run, grace=0):
            yield
    finally:
        await runner.aclose()
