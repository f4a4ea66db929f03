"""Cron evaluation for schedule triggers: validation, the next tick, and which
tick (if any) a late evaluation fires under the catch-up policy.

Expressions are croniter's: five fields, or six with seconds last; evaluated in
the trigger's IANA time zone (``zoneinfo``), so ``0 2 * * *`` in Europe/Berlin
is 02:00 local on both sides of a DST change (a tick that does not exist that
night moves to the next valid time, as croniter does). Times are stored in UTC.
Everything here is pure and takes ``now`` from its caller: the engine's clock,
or a test's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from bhiv.agents.models import CatchUp


def zone(name: str) -> ZoneInfo:
    """The time zone, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Berlin)") from None


def check_cron(expression: str) -> str:
    if not croniter.is_valid(expression):
        raise ValueError(
            f"invalid cron expression {expression!r}: five fields "
            "(minute hour day-of-month month day-of-week), or six with seconds last"
        )
    return expression


def next_after(expression: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after ``after``, in UTC."""
    local = after.astimezone(zone(timezone))
    tick: dt.datetime = croniter(expression, local).get_next(dt.datetime)
    return tick.astimezone(dt.UTC)


def latest_at_or_before(expression: str, timezone: str, now: dt.datetime) -> dt.datetime:
    """The last tick at or before ``now``, in UTC."""
    local = (now + dt.timedelta(seconds=1)).astimezone(zone(timezone))
    tick: dt.datetime = croniter(expression, local).get_prev(dt.datetime)
    return tick.astimezone(dt.UTC)


@dataclass(frozen=True)
class Plan:
    fire: dt.datetime | None  # the tick to fire now (its time is the de-duplication key)
    next_fire_at: dt.datetime  # the tick to wait for afterwards
    missed: bool  # ticks passed while nothing evaluated them


def plan(
    expression: str, timezone: str, due: dt.datetime, now: dt.datetime, catch_up: CatchUp
) -> Plan:
    """What to do about the tick ``due`` (<= ``now``).

    On time means the following tick has not come yet: ``due`` fires. Otherwise ticks
    were missed (the service was down): ``skip`` fires none of them, ``run_once`` fires
    the latest missed tick once. Either way the next tick is the first after ``now``.
    """
    following = next_after(expression, timezone, due)
    if following > now:
        return Plan(fire=due, next_fire_at=following, missed=False)
    upcoming = next_after(expression, timezone, now)
    if catch_up is CatchUp.run_once:
        return Plan(latest_at_or_before(expression, timezone, now), upcoming, missed=True)
    return Plan(fire=None, next_fire_at=upcoming, missed=True)
