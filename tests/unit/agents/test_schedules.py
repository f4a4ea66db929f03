"""Schedule triggers on a controlled clock: cron in a time zone, catch-up and
overlap policies, and one run per tick when several replicas evaluate it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from bhiv.agents import schedules, triggers
from bhiv.agents.models import (
    Base,
    CatchUp,
    Overlap,
    RunStatus,
    Trigger,
    TriggerFiring,
    TriggerKind,
    WorkflowDefinition,
    WorkflowRun,
)
from bhiv.core.db import Database

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def test_next_tick_is_local_time_across_dst() -> None:
    # 02:00 in Berlin: 01:00 UTC in winter, 00:00 UTC in summer.
    assert schedules.next_after(
        "0 2 * * *", "Europe/Berlin", at("2026-01-10T12:00:00+00:00")
    ) == at("2026-01-11T01:00:00+00:00")
    assert schedules.next_after(
        "0 2 * * *", "Europe/Berlin", at("2026-07-10T12:00:00+00:00")
    ) == at("2026-07-11T00:00:00+00:00")


def test_plan_on_time_and_after_missed_ticks() -> None:
    cron, zone = "0 * * * *", "UTC"
    due = at("2026-01-01T10:00:00+00:00")
    on_time = schedules.plan(cron, zone, due, due + dt.timedelta(seconds=3), CatchUp.skip)
    assert (on_time.fire, on_time.next_fire_at, on_time.missed) == (
        due,
        at("2026-01-01T11:00:00+00:00"),
        False,
    )
    later = at("2026-01-01T13:20:00+00:00")  # 11:00, 12:00 and 13:00 passed too
    skipped = schedules.plan(cron, zone, due, later, CatchUp.skip)
    assert (skipped.fire, skipped.next_fire_at, skipped.missed) == (
        None,
        at("2026-01-01T14:00:00+00:00"),
        True,
    )
    once = schedules.plan(cron, zone, due, later, CatchUp.run_once)
    assert (once.fire, once.next_fire_at) == (
        at("2026-01-01T13:00:00+00:00"),
        at("2026-01-01T14:00:00+00:00"),
    )


def test_bad_cron_and_zone_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid cron"):
        schedules.check_cron("61 * * * *")
    with pytest.raises(ValueError, match="unknown time zone"):
        schedules.zone("Mars/Olympus")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'unit.db'}")
    Base.metadata.create_all(database.engine)
    with database.session() as s:
        s.add(WorkflowDefinition(name="wf", version=1, source="api", spec={"steps": []}))
        s.commit()
    return database


def schedule(db: Database, now: dt.datetime, **fields: object) -> int:
    with db.session() as s:
        values: dict[str, object] = {
            "name": "every-minute",
            "kind": TriggerKind.schedule,
            "enabled": True,
            "workflow": "wf",
            "input": {"at": "{{ tick.at }}"},
            "cron": "* * * * *",
            "timezone": "UTC",
            "catch_up": CatchUp.skip,
            "overlap": Overlap.allow,
            "builtin": False,
        }
        trigger = Trigger(**{**values, **fields})
        trigger.next_fire_at = triggers.first_fire_at(trigger, now)
        s.add(trigger)
        s.commit()
        return trigger.id


def runs(db: Database) -> list[WorkflowRun]:
    with db.session(write=False) as s:
        return list(s.scalars(select(WorkflowRun).order_by(WorkflowRun.id)))


def firing_keys(db: Database) -> list[str]:
    with db.session(write=False) as s:
        return list(s.scalars(select(TriggerFiring.dedup_key).order_by(TriggerFiring.id)))


def tick(db: Database, now: dt.datetime) -> None:
    """One engine tick of two replicas at the same instant."""
    for _replica in range(2):
        for trigger_id in triggers.due_schedules(db, now):
            triggers.evaluate_schedule(db, trigger_id, now)


def test_each_tick_fires_once_with_two_replicas(db: Database) -> None:
    t0 = at("2026-01-01T10:00:30+00:00")
    schedule(db, t0)
    tick(db, t0)  # nothing due yet
    assert runs(db) == []
    tick(db, at("2026-01-01T10:01:00.2+00:00"))
    tick(db, at("2026-01-01T10:01:00.4+00:00"))  # the same tick, again
    tick(db, at("2026-01-01T10:02:01+00:00"))
    assert [r.input["at"] for r in runs(db)] == [
        "2026-01-01T10:01:00+00:00",
        "2026-01-01T10:02:00+00:00",
    ]
    assert firing_keys(db) == ["tick:2026-01-01T10:01:00+00:00", "tick:2026-01-01T10:02:00+00:00"]


def test_catch_up_run_once_fires_one_run_for_missed_ticks(db: Database) -> None:
    schedule(db, at("2026-01-01T10:00:30+00:00"), catch_up=CatchUp.run_once)
    tick(db, at("2026-01-01T10:05:10+00:00"))  # 10:01 .. 10:05 were missed
    assert [r.input["at"] for r in runs(db)] == ["2026-01-01T10:05:00+00:00"]
    with db.session(write=False) as s:
        assert s.scalar(select(Trigger.next_fire_at)) == at("2026-01-01T10:06:00+00:00")


def test_catch_up_skip_drops_missed_ticks(db: Database) -> None:
    schedule(db, at("2026-01-01T10:00:30+00:00"), catch_up=CatchUp.skip)
    tick(db, at("2026-01-01T10:05:10+00:00"))
    assert runs(db) == []
    tick(db, at("2026-01-01T10:06:00+00:00"))
    assert len(runs(db)) == 1


def finish_runs(db: Database) -> None:
    with db.session() as s:
        for run in s.scalars(select(WorkflowRun)):
            run.status = RunStatus.succeeded
        s.commit()


def test_overlap_skip_and_buffer_one(db: Database) -> None:
    t0 = at("2026-01-01T10:00:30+00:00")
    skip_id = schedule(db, t0, overlap=Overlap.skip)
    tick(db, at("2026-01-01T10:01:00+00:00"))
    tick(db, at("2026-01-01T10:02:00+00:00"))  # the first run is still running: skipped
    assert len(runs(db)) == 1
    assert firing_keys(db)[-1] == "tick:2026-01-01T10:02:00+00:00"

    with db.session() as s:
        s.get(Trigger, skip_id).overlap = Overlap.buffer_one  # type: ignore[union-attr]
        s.commit()
    tick(db, at("2026-01-01T10:03:00+00:00"))  # buffered
    tick(db, at("2026-01-01T10:04:00+00:00"))  # replaces nothing: one tick is buffered at most
    assert len(runs(db)) == 1
    finish_runs(db)
    tick(db, at("2026-01-01T10:04:10+00:00"))  # the run ended: the buffered tick starts
    assert [r.input["at"] for r in runs(db)][-1] == "2026-01-01T10:04:00+00:00"
    assert len(runs(db)) == 2
