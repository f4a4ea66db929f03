"""Triggers: which triggers an event, webhook or schedule tick concerns, and
starting each one's run at most once.

A firing is a row unique on (trigger, de-duplication key) — the event ID for
events and webhooks, the tick's UTC time for schedules — inserted in the same
transaction as the run it starts (``bhiv.agents.starts``, the path ``POST
/runs`` takes). A redelivered event, or a second replica evaluating the same
tick, collides on that key and its transaction changes nothing: one event or
tick starts at most one run per trigger, whatever the delivery guarantees.
Schedules are also claimed with a compare-and-set on ``next_fire_at``, so
replicas do not even attempt the same tick twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bhiv.agents import schedules, starts
from bhiv.agents.expressions import ExpressionError, render
from bhiv.agents.models import (
    Overlap,
    RunStatus,
    Trigger,
    TriggerFiring,
    TriggerKind,
    WorkflowRun,
)
from bhiv.core.db import Database, rows_changed
from bhiv.core.errors import Problem

log = logging.getLogger("bhiv.agents.triggers")

# The integrations service announces each verified inbound webhook under this type.
WEBHOOK_RECEIVED = "webhook.received"
ACTIVE = (RunStatus.running, RunStatus.compensating)


@dataclass
class Outcome:
    """What an event did: runs started, triggers that had seen it already, failures."""

    runs: list[int] = field(default_factory=list)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


def started_by(trigger: Trigger) -> str:
    return f"trigger:{trigger.name}"


def _record(
    session: Session, trigger: Trigger, key: str, names: dict[str, Any], now: dt.datetime
) -> TriggerFiring:
    """Add the firing and, unless the mapping or the workflow fails, its run (not committed)."""
    firing = TriggerFiring(trigger_id=trigger.id, dedup_key=key, at=now)
    session.add(firing)
    session.flush()  # a duplicate key fails here, before any run exists
    try:
        input_ = render(trigger.input, names)
        if not isinstance(input_, dict):
            raise ExpressionError("the input mapping must produce a JSON object")
        run = starts.start(
            session,
            trigger.workflow,
            trigger.version,
            input_,
            started_by(trigger),
            detail={"trigger": trigger.name, "dedup_key": key},
        )
    except (ExpressionError, Problem) as exc:
        firing.error = exc.detail if isinstance(exc, Problem) else str(exc)
        log.warning("trigger %s did not start a run: %s", trigger.name, firing.error)
        return firing
    firing.run_id = run.id
    trigger.last_fired_at = now
    trigger.last_run_id = run.id
    return firing


def fire(
    db: Database, trigger_id: int, key: str, names: dict[str, Any], now: dt.datetime
) -> TriggerFiring | None:
    """Start ``trigger_id``'s run for ``key`` in one transaction; None if ``key`` fired before."""
    with db.session() as session:
        trigger = session.get(Trigger, trigger_id)
        if trigger is None or not trigger.enabled:
            return None
        if session.scalar(
            select(TriggerFiring.id).where(
                TriggerFiring.trigger_id == trigger_id, TriggerFiring.dedup_key == key
            )
        ):
            return None
        try:
            firing = _record(session, trigger, key, names, now)
            session.commit()
        except IntegrityError:  # a concurrent delivery of the same event won
            session.rollback()
            return None
        session.expunge(firing)
        return firing


# --- events and webhooks -------------------------------------------------------------


def matching(session: Session, envelope: dict[str, Any]) -> list[int]:
    """Enabled triggers an event concerns: event triggers on its type; webhook
    triggers on their source, for a ``webhook.received`` announcement."""
    kind_event = (Trigger.kind == TriggerKind.event) & (Trigger.event_type == envelope["type"])
    conditions = [kind_event]
    data = envelope.get("data")
    if envelope["type"] == WEBHOOK_RECEIVED and isinstance(data, dict):
        conditions.append(
            (Trigger.kind == TriggerKind.webhook) & (Trigger.source == str(data.get("source")))
        )
    return list(
        session.scalars(
            select(Trigger.id)
            .where(Trigger.enabled.is_(True), or_(*conditions))
            .order_by(Trigger.id)
        )
    )


def handle_event(db: Database, envelope: dict[str, Any], now: dt.datetime) -> Outcome:
    """Fire every matching trigger for one delivered event (``id``, ``type``, ``data``, ...)."""
    with db.session(write=False) as session:
        ids = matching(session, envelope)
    outcome = Outcome()
    names = {"event": envelope}
    for trigger_id in ids:
        firing = fire(db, trigger_id, f"event:{envelope['id']}", names, now)
        if firing is None:
            outcome.duplicates += 1
        elif firing.run_id is not None:
            outcome.runs.append(firing.run_id)
        elif firing.error:
            outcome.errors.append(firing.error)
    return outcome


# --- schedules -----------------------------------------------------------------------


def due_schedules(db: Database, now: dt.datetime) -> list[int]:
    with db.session(write=False) as session:
        return list(
            session.scalars(
                select(Trigger.id)
                .where(
                    Trigger.kind == TriggerKind.schedule,
                    Trigger.enabled.is_(True),
                    or_(Trigger.next_fire_at <= now, Trigger.buffered_tick.is_not(None)),
                )
                .order_by(Trigger.id)
                .limit(100)
            )
        )


def _active(session: Session, trigger: Trigger) -> bool:
    if trigger.last_run_id is None:
        return False
    status = session.scalar(select(WorkflowRun.status).where(WorkflowRun.id == trigger.last_run_id))
    return status in ACTIVE


def _tick_names(trigger: Trigger, tick: dt.datetime) -> dict[str, Any]:
    local = tick.astimezone(schedules.zone(trigger.timezone or "UTC"))
    return {
        "tick": {"at": tick.isoformat(), "local": local.isoformat()},
        "trigger": {"id": trigger.id, "name": trigger.name},
    }


def evaluate_schedule(db: Database, trigger_id: int, now: dt.datetime) -> int | None:
    """Handle one schedule trigger's due tick (and any buffered one); the run started, if any.

    Replicas race on the guarded UPDATE of ``next_fire_at``; the loser changes nothing.
    A tick that has a firing already (the unique key) changes nothing either.
    """
    try:
        return _evaluate(db, trigger_id, now)
    except IntegrityError:
        return None


def _evaluate(db: Database, trigger_id: int, now: dt.datetime) -> int | None:
    with db.session() as session:
        trigger = session.get(Trigger, trigger_id)
        if trigger is None or not trigger.enabled or trigger.kind is not TriggerKind.schedule:
            return None
        assert trigger.cron is not None
        zone_name = trigger.timezone or "UTC"
        run_id = None
        if trigger.buffered_tick is not None and not _active(session, trigger):
            tick, trigger.buffered_tick = trigger.buffered_tick, None
            run_id = _fire_tick(session, trigger, tick, now)
        due = trigger.next_fire_at
        if due is not None and due <= now:
            plan = schedules.plan(trigger.cron, zone_name, due, now, trigger.catch_up)
            claimed = session.execute(
                update(Trigger)
                .where(Trigger.id == trigger_id, Trigger.next_fire_at == due)
                .values(next_fire_at=plan.next_fire_at)
                .execution_options(synchronize_session=False)
            )
            if rows_changed(claimed) != 1:
                session.rollback()  # another replica took this tick
                return None
            trigger.next_fire_at = plan.next_fire_at
            if plan.missed:
                log.info("trigger %s missed ticks before %s", trigger.name, now.isoformat())
            if plan.fire is not None:
                if _active(session, trigger) and trigger.overlap is not Overlap.allow:
                    if trigger.overlap is Overlap.buffer_one:
                        trigger.buffered_tick = plan.fire
                    else:
                        session.add(
                            TriggerFiring(
                                trigger_id=trigger.id,
                                dedup_key=_tick_key(plan.fire),
                                at=now,
                                error="skipped: the previous run is still active (overlap: skip)",
                            )
                        )
                else:
                    run_id = _fire_tick(session, trigger, plan.fire, now) or run_id
        session.commit()
        return run_id


def _tick_key(tick: dt.datetime) -> str:
    return "tick:" + tick.astimezone(dt.UTC).isoformat()


def _fire_tick(
    session: Session, trigger: Trigger, tick: dt.datetime, now: dt.datetime
) -> int | None:
    firing = _record(session, trigger, _tick_key(tick), _tick_names(trigger, tick), now)
    return firing.run_id


def first_fire_at(trigger: Trigger, now: dt.datetime) -> dt.datetime | None:
    """``next_fire_at`` for a schedule being enabled or changed: the first tick after now."""
    if trigger.kind is not TriggerKind.schedule or not trigger.enabled or trigger.cron is None:
        return None
    return schedules.next_after(trigger.cron, trigger.timezone or "UTC", now)
