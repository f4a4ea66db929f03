"""Outbound webhooks: fan-out of events to subscriptions, and the delivery worker.

Fan-out happens in the transaction that stores the event, so an accepted event
always has its deliveries. The worker claims due deliveries with a lease (a
guarded UPDATE of ``locked_until``, so two replicas never send one delivery at
once), signs and POSTs them, and records each attempt. A failure schedules the
next attempt with exponential backoff and jitter; after the last attempt the
delivery is dead-lettered until someone replays it. Everything is in the
database: a restart, or a worker that dies mid-send (its lease runs out), loses
nothing — at worst an attempt is repeated, and receivers deduplicate on
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import anyio.to_thread
import httpx
from fastapi import FastAPI
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from bhiv import __version__
from bhiv.core import tracing
from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.backoff import delay_after, exponential, with_jitter
from bhiv.core.db import Database, rows_changed, utcnow
from bhiv.core.errors import conflict
from bhiv.integrations import egress, signing
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Subscription
from bhiv.integrations.settings import IntegrationsSettings

log = logging.getLogger("bhiv.integrations.delivery")

EXCERPT = 500


def storable(text: str, limit: int = EXCERPT) -> str:
    """Text from a receiver, safe for any database column (PostgreSQL refuses NUL)."""
    return text[:limit].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def matches(patterns: list[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def fan_out(session: Session, event: Event) -> int:
    """Queue one delivery per active subscription that wants ``event``; no commit."""
    count = 0
    for sub in session.scalars(select(Subscription).where(Subscription.active.is_(True))):
        if matches(sub.event_types, event.type):
            session.add(
                Delivery(
                    subscription_id=sub.id, event_id=event.id, next_attempt_at=event.received_at
                )
            )
            count += 1
    return count


def payload(event: Event) -> bytes:
    """The body every attempt of every delivery of ``event`` sends (Standard Webhooks shape)."""
    body = {
        "id": event.event_id,
        "type": event.type,
        "timestamp": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "source": event.source,
        "data": event.data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def replay(session: Session, delivery: Delivery) -> None:
    """Queue a delivery again as a fresh round of attempts (no commit)."""
    if delivery.status == DeliveryStatus.pending:
        raise conflict(
            f"Delivery {delivery.id} is still pending; it will be tried at {delivery.next_attempt_at}."
        )
    delivery.status = DeliveryStatus.pending
    delivery.attempts = 0
    delivery.replays += 1
    delivery.next_attempt_at = utcnow()
    delivery.locked_until = None
    delivery.updated_at = utcnow()


def replay_dead(session: Session, subscription_id: int) -> int:
    """Queue every dead delivery of a subscription again (no commit)."""
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscription_id == subscription_id, Delivery.status == DeliveryStatus.dead)
        .values(
            status=DeliveryStatus.pending,
            attempts=0,
            replays=Delivery.replays + 1,
            next_attempt_at=now,
            locked_until=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return rows_changed(result)


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    subscription_id: int
    url: str
    msg_id: str
    body: bytes
    secret: str = field(repr=False)
    traceparent: str | None = None  # the event's cause


@dataclass(frozen=True)
class Outcome:
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: IntegrationsSettings,
        policy: egress.EgressPolicy,
    ) -> None:
        self.db, self.box, self.settings, self.policy = db, box, settings, policy
        self.schedule = exponential(
            settings.delivery_retry_initial_seconds,
            settings.delivery_retry_base,
            settings.delivery_retry_max_seconds,
        )
        # No redirects: a 3xx is a failure (the spec), and may point past the egress rules.
        self._http = egress.guarded_client(
            policy,
            headers={
                "User-Agent": f"bhiv-integrations/{__version__}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(settings.delivery_timeout_seconds),
            limits=httpx.Limits(max_connections=settings.delivery_concurrency),
        )

    # --- database steps (run in threads) -------------------------------------------

    def claim(self, limit: int) -> list[int]:
        now = utcnow()
        lease = now + dt.timedelta(seconds=self.settings.delivery_lease_seconds)
        free = or_(Delivery.locked_until.is_(None), Delivery.locked_until < now)
        with self.db.session() as session:
            due = session.scalars(
                select(Delivery.id)
                .join(Subscription, Subscription.id == Delivery.subscription_id)
                .where(
                    Delivery.status == DeliveryStatus.pending, Delivery.next_attempt_at <= now, free
                )
                .where(Subscription.active.is_(True))
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            ).all()
            claimed = []
            for delivery_id in due:
                # Another replica may have claimed it since the SELECT: the
                # guarded UPDATE matches nothing then.
                result = session.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending, free
                    )
                    .values(locked_until=lease)
                )
                if rows_changed(result) == 1:
                    claimed.append(delivery_id)
            session.commit()
        return claimed

    def prepare(self, delivery_id: int) -> Outgoing:
        with self.db.session(write=False) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                raise LookupError(delivery_id)
            event = session.get(Event, delivery.event_id)
            sub = session.get(Subscription, delivery.subscription_id)
            if event is None or sub is None:  # deleted since the claim (cascades)
                raise LookupError(delivery_id)
            return Outgoing(
                delivery_id=delivery.id,
                subscription_id=sub.id,
                url=sub.url,
                msg_id=event.event_id,
                body=payload(event),
                secret=self.box.open(sub.secret),
                traceparent=event.traceparent,
            )

    def record(self, delivery_id: int, outcome: Outcome) -> None:
        now = utcnow()
        with self.db.session() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return
            attempt = delivery.attempts + 1
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery.id,
                    attempt=attempt,
                    attempted_at=now,
                    duration_ms=outcome.duration_ms,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    response_excerpt=outcome.excerpt,
                )
            )
            delivery.attempts = attempt
            delivery.last_status_code = outcome.status_code
            delivery.last_error = outcome.error
            delivery.locked_until = None
            delivery.updated_at = now
            if outcome.ok:
                delivery.status = DeliveryStatus.succeeded
                delivery.delivered_at = now
            elif outcome.status_code == 410:
                # The spec: 410 Gone means the receiver wants no more webhooks.
                delivery.status = DeliveryStatus.dead
                sub = session.get(Subscription, delivery.subscription_id)
                if sub is not None and sub.active:
                    sub.active = False
                    sub.disabled_reason = f"The receiver answered 410 Gone at {now.isoformat()}."
                    sub.updated_at = now
            elif attempt >= self.settings.delivery_max_attempts:
                delivery.status = DeliveryStatus.dead
                log.warning("delivery %s dead-lettered after %s attempts", delivery.id, attempt)
            else:
                wait = with_jitter(
                    delay_after(self.schedule, attempt), self.settings.delivery_retry_jitter
                )
                if outcome.retry_after is not None:
                    wait = max(
                        wait, min(outcome.retry_after, self.settings.delivery_retry_max_seconds)
                    )
                delivery.next_attempt_at = now + dt.timedelta(seconds=wait)
            session.commit()

    # --- the network step -------------------------------------------------------------

    async def send(self, out: Outgoing) -> Outcome:
        start = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - start) * 1000, 2)

        refused = self.policy.url_refusal(out.url)
        if refused:
            return Outcome(elapsed(), error=refused)
        headers = signing.sign(out.secret, out.msg_id, int(time.time()), out.body)
        try:
            response = await self._http.post(out.url, content=out.body, headers=headers)
        except httpx.TimeoutException:
            return Outcome(
                elapsed(), error=f"no answer within {self.settings.delivery_timeout_seconds}s"
            )
        except httpx.TransportError as exc:
            return Outcome(
                elapsed(), error=f"{type(exc).__name__}: could not reach {egress.host_of(out.url)}"
            )
        except egress.EgressRefused as exc:
            return Outcome(elapsed(), error=str(exc))
        error = None if response.is_success else f"HTTP {response.status_code}"
        return Outcome(
            elapsed(),
            response.status_code,
            error,
            storable(response.text),
            _retry_after(response.headers.get("Retry-After")),
        )

    async def deliver(self, delivery_id: int) -> None:
        # The webhook request inside carries this span's traceparent (the httpx instrumentation);
        # the span links to the request that caused the event (_deliver, once it is read).
        with tracing.span("webhook delivery", {"bhiv.delivery_id": delivery_id}):
            await self._deliver(delivery_id)

    async def _deliver(self, delivery_id: int) -> None:
        try:
            out = await anyio.to_thread.run_sync(self.prepare, delivery_id)
        except LookupError:
            return
        except UnreadableSecret as exc:
            outcome = Outcome(0.0, error=str(exc))
        else:
            tracing.link(out.traceparent)
            outcome = await self.send(out)
        await anyio.to_thread.run_sync(self.record, delivery_id, outcome)

    async def run(self, stop: asyncio.Event) -> None:
        limit = self.settings.delivery_concurrency
        while not stop.is_set():
            claimed: list[int] = []
            try:
                claimed = await anyio.to_thread.run_sync(self.claim, limit)
                await asyncio.gather(*(self.deliver(d) for d in claimed))
            except Exception:
                # A claimed delivery whose attempt was not recorded keeps its
                # lease until it expires, then any worker retries it.
                log.exception("delivery worker iteration failed")
            if len(claimed) < limit:
                await sleep_unless_stopped(stop, self.settings.worker_poll_seconds)

    async def aclose(self) -> None:
        await self._http.aclose()


@asynccontextmanager
async def delivery_worker(app: FastAPI) -> AsyncIterator[None]:
    """Lifespan hook: deliver pending webhooks until the app stops."""
    worker = DeliveryWorker(
        app.state.db, app.state.secret_box, app.state.settings, app.state.egress
    )
    # Attempts in flight may finish; one cut short is retried after its lease.
    grace = app.state.settings.delivery_timeout_seconds + 5
    try:
        async with background("webhook-delivery", worker.run, grace=grace):
            yield
    finally:
        await worker.aclose()
