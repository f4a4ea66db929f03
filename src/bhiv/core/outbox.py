"""A transactional outbox: domain events written in the same database transaction
as the change they describe, and relayed to the integrations service afterwards.

Publishing to a broker (or calling the integrations service) inside a request
would lose the event whenever the process stops between its commit and the
call, or publish an event for a change that was then rolled back. Here the
event is a row in the service's own database, committed or rolled back with
the change; a relay (a lifespan hook) ships pending rows to the integrations
service's ``POST /events`` and marks a row sent only after a 2xx answer. A row
can therefore be sent twice (the relay stopped after the send and before the
mark) but never lost; the integrations service deduplicates on the event ID.

A service adds the table to its metadata and migrations, publishes from its
write handlers, and runs the relay::

    OUTBOX = Outbox(Base.metadata, source="logistics")          # models.py
    OUTBOX.publish(session, "shipment.status_changed", {...})   # before the commit
    ServiceSpec(..., lifespan_hooks=(OUTBOX.relay,))            # service.py

with settings inheriting :class:`OutboxSettings`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx
from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field, SecretStr
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from bhiv.core import tracing
from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.backoff import delay_after, exponential
from bhiv.core.client import ServiceClient, UpstreamError, UpstreamUnavailable
from bhiv.core.db import Database, UTCDateTime, utcnow
from bhiv.core.metrics import DatabaseCollector
from bhiv.core.service_auth import MissingServiceCredential, service_headers
from bhiv.core.settings import ServiceSettings

log = logging.getLogger("bhiv.outbox")

# A row the integrations service refused (4xx) is retried on this schedule,
# capped at an hour: the refusal may be a deploy away from being fixed, and the
# event must not be dropped.
ROW_RETRY = exponential(initial=5.0, base=2.0, maximum=3600.0)
# The relay's own pause while the integrations service is unreachable.
OUTAGE_RETRY = exponential(initial=1.0, base=2.0, maximum=30.0)
ERROR_EXCERPT = 500
# Answers that say nothing about the event itself (wrong credentials, wrong
# URL, slow down): the whole relay pauses instead of postponing each event.
SYSTEMIC = frozenset({401, 403, 404, 405, 429})


class RelayBlocked(Exception):
    """The integrations service refused the relay itself, not one event."""


def _integrations_url() -> str:
    from bhiv import (
        catalog,  # the catalog is data; imported late so core never depends on it at import
    )

    return f"http://127.0.0.1:{catalog.get('integrations').port}"


class OutboxSettings(ServiceSettings):
    """Settings of a service that publishes domain events through an outbox."""

    integrations_url: str = Field(
        default_factory=_integrations_url,
        description="Base URL of the integrations service the outbox relay sends events to.",
    )
    outbox_relay_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between looks for unsent events when there are none."
    )
    outbox_batch_size: int = Field(100, ge=1, le=1000, description="Events sent per look.")
    outbox_api_key: SecretStr | None = Field(
        None,
        description="API key the relay presents to the integrations service. "
        "Unset: a short-lived JWT signed with the shared HS256 secret.",
    )


@dataclass(frozen=True)
class PendingEvent:
    row_id: int
    event_id: str
    type: str
    data: dict[str, Any]
    occurred_at: dt.datetime
    attempts: int
    traceparent: str | None = None

    def body(self, source: str) -> dict[str, Any]:
        body = {
            "id": self.event_id,
            "type": self.type,
            "source": source,
            "occurred_at": self.occurred_at.isoformat(),
            "data": self.data,
        }
        # Only when known: an integrations service of an older release refuses the field.
        if self.traceparent:
            body["traceparent"] = self.traceparent
        return body


class Outbox:
    """One service's outbox table, its publisher and its relay."""

    def __init__(self, metadata: MetaData, *, source: str, table_name: str = "outbox") -> None:
        self.source = source
        self.table = Table(
            table_name,
            metadata,
            Column("id", Integer, primary_key=True),
            Column("event_id", String(64), nullable=False, unique=True),
            Column("type", String(100), nullable=False),
            Column("data", JSON, nullable=False),
            Column("occurred_at", UTCDateTime, nullable=False),
            Column("attempts", Integer, nullable=False, default=0),
            Column("next_attempt_at", UTCDateTime, nullable=False),
            Column("last_error", Text),
            # NULL until the integrations service has acknowledged the event.
            Column("sent_at", UTCDateTime, index=True),
            # The W3C traceparent of the request that published it (NULL with tracing
            # off): the relay's span links to it, and integrations' deliveries do too.
            Column("traceparent", String(55)),
        )

    # --- publishing -------------------------------------------------------------

    def publish(self, session: Session, type: str, data: Mapping[str, Any]) -> str:
        """Record an event in the caller's transaction; returns its ID.

        Does not commit: the event exists exactly when the caller's change does.
        """
        event_id = f"evt_{uuid.uuid4().hex}"
        now = utcnow()
        session.execute(
            insert(self.table).values(
                event_id=event_id,
                type=type,
                data=dict(data),
                occurred_at=now,
                attempts=0,
                next_attempt_at=now,
                traceparent=tracing.current_traceparent(),
            )
        )
        return event_id

    # --- relaying ---------------------------------------------------------------

    def pending(self, db: Database, limit: int) -> list[PendingEvent]:
        t = self.table
        with db.session(write=False) as session:
            rows = session.execute(
                select(
                    t.c.id,
                    t.c.event_id,
                    t.c.type,
                    t.c.data,
                    t.c.occurred_at,
                    t.c.attempts,
                    t.c.traceparent,
                )
                .where(t.c.sent_at.is_(None), t.c.next_attempt_at <= utcnow())
                .order_by(t.c.id)
                .limit(limit)
            ).all()
        return [PendingEvent(*row) for row in rows]

    def mark_sent(self, db: Database, row_ids: list[int]) -> None:
        if not row_ids:
            return
        with db.session() as session:
            session.execute(
                update(self.table)
                .where(self.table.c.id.in_(row_ids), self.table.c.sent_at.is_(None))
                .values(sent_at=utcnow(), last_error=None)
            )
            session.commit()

    def mark_refused(self, db: Database, event: PendingEvent, error: str) -> None:
        attempts = event.attempts + 1
        retry_at = utcnow() + dt.timedelta(seconds=delay_after(ROW_RETRY, attempts))
        with db.session() as session:
            session.execute(
                update(self.table)
                .where(self.table.c.id == event.row_id)
                .values(
                    attempts=attempts, next_attempt_at=retry_at, last_error=error[:ERROR_EXCERPT]
                )
            )
            session.commit()

    async def relay_once(
        self, db: Database, client: ServiceClient, headers: dict[str, str], limit: int
    ) -> int:
        """Send one batch; returns how many the integrations service accepted.

        Transport failures, 5xx and :data:`SYSTEMIC` answers stop the batch
        (the rest would fail too) and propagate after the accepted events are
        marked; any other 4xx postpones that one event.
        """
        events = await anyio.to_thread.run_sync(self.pending, db, limit)
        if not events:
            return 0
        accepted: list[int] = []
        # The batch's own trace, linked to each request that published one of its events;
        # each event also carries its traceparent to integrations (the body's field).
        with tracing.span(
            "outbox relay",
            {"bhiv.source": self.source, "bhiv.events": len(events)},
            links=[event.traceparent for event in events],
        ):
            try:
                for event in events:
                    response = await client.post(
                        "/events", json=event.body(self.source), headers=headers
                    )
                    if response.is_success:
                        accepted.append(event.row_id)
                    elif response.status_code in SYSTEMIC:
                        raise RelayBlocked(f"integrations answered {response.status_code}")
                    else:
                        detail = f"{response.status_code}: {response.text}"
                        log.warning(
                            "integrations refused event %s (%s)", event.event_id, detail[:200]
                        )
                        await anyio.to_thread.run_sync(self.mark_refused, db, event, detail)
            finally:
                await anyio.to_thread.run_sync(self.mark_sent, db, accepted)
        return len(accepted)

    @asynccontextmanager
    async def relay(self, app: FastAPI) -> AsyncIterator[None]:
        """Lifespan hook: relay pending events until the app stops."""
        settings: OutboxSettings = app.state.settings
        app.state.metrics.registry.register(OutboxCollector(app.state.db, self))
        # A batch in flight gets 10 s to be acknowledged; anything unacknowledged
        # stays pending and is sent again by the next relay (at least once).
        relay = functools.partial(self._run, app.state.db, settings)
        async with background(f"{self.source}-outbox-relay", relay, grace=10):
            yield

    async def _run(self, db: Database, settings: OutboxSettings, stop: asyncio.Event) -> None:
        # One attempt per call: the relay's own loop is the retry.
        client = ServiceClient("integrations", settings.integrations_url, attempts=1, timeout=10.0)
        outages = 0
        try:
            while not stop.is_set():
                pause = settings.outbox_relay_interval
                try:
                    headers = service_headers(settings, api_key=settings.outbox_api_key)
                    sent = await self.relay_once(db, client, headers, settings.outbox_batch_size)
                    if outages:
                        log.info("integrations service reachable again; relaying events")
                    outages = 0
                    if sent == settings.outbox_batch_size:
                        pause = 0  # more are probably waiting
                except (
                    httpx.TransportError,
                    UpstreamError,
                    UpstreamUnavailable,
                    RelayBlocked,
                ) as exc:
                    outages += 1
                    pause = delay_after(OUTAGE_RETRY, outages)
                    log.warning(
                        "integrations service unavailable (%s); events wait in the outbox, next try in %.1fs",
                        exc if isinstance(exc, RelayBlocked) else type(exc).__name__,
                        pause,
                    )
                except MissingServiceCredential as exc:
                    pause = 60.0
                    log.error("outbox relay cannot authenticate: %s", exc)
                except Exception:
                    # The relay must outlive any one bad batch (a database
                    # hiccup, a bug): the rows stay pending and are retried.
                    outages += 1
                    pause = delay_after(OUTAGE_RETRY, outages)
                    log.exception("outbox relay failed; retrying in %.1fs", pause)
                await sleep_unless_stopped(stop, pause)
        finally:
            await client.aclose()


class OutboxCollector(DatabaseCollector):
    """The outbox's backlog: events not yet acknowledged, and how long the oldest waited."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        super().__init__(db)
        self.outbox = outbox

    def collect(self) -> Iterator[Any]:
        c = self.outbox.table.c
        with self.db.session(write=False) as session:
            pending, oldest = session.execute(
                select(func.count(), func.min(c.occurred_at)).where(c.sent_at.is_(None))
            ).one()
        yield GaugeMetricFamily(
            "bhiv_outbox_pending_events",
            "Events in the outbox the integrations service has not acknowledged yet.",
            value=pending,
        )
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "bhiv_outbox_oldest_pending_age_seconds",
            "Seconds the oldest unacknowledged event has waited; 0 with none pending.",
            value=max(0.0, age),
        )
