"""Per-key rate limits (requests and tokens per minute) and monthly budgets.

Limits are fixed one-minute windows kept in the database, so every replica
counts against the same numbers. A request is admitted by one guarded UPDATE
(``WHERE requests < rpm AND tokens < tpm``): concurrent requests cannot both
take the last slot, because on PostgreSQL the second UPDATE waits for the
first's row lock and re-checks, and on SQLite writers are serialised. Its
prompt tokens count at admission, its answer's tokens once known.

A budget stops new requests once the month's spend reaches it; requests
already admitted finish, so spend can pass the budget by what they cost.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bhiv.core import Problem
from bhiv.core.db import rows_changed
from bhiv.llm.models import RateWindow, UsageRecord
from bhiv.llm.upsert import insert_for


def _window(now: float) -> tuple[int, int]:
    """(window number, seconds until it ends)."""
    minute = int(now // 60)
    return minute, max(1, int((minute + 1) * 60 - now))


def admit(
    session: Session,
    subject: str,
    policy: dict[str, Any],
    prompt_tokens: int,
    now: float | None = None,
) -> dict[str, str]:
    """Count one request against the caller's minute; 429 when a limit is reached.

    Returns the ``x-ratelimit-*`` headers to answer with.
    """
    rpm, tpm = policy["requests_per_minute"], policy["tokens_per_minute"]
    if rpm is None and tpm is None:
        return {}
    now = time.time() if now is None else now
    window, reset = _window(now)
    session.execute(
        insert_for(session, RateWindow)
        .values(subject=subject, window_start=window, requests=0, tokens=0)
        .on_conflict_do_nothing()
    )
    stmt = update(RateWindow).where(
        RateWindow.subject == subject, RateWindow.window_start == window
    )
    if rpm is not None:
        stmt = stmt.where(RateWindow.requests < rpm)
    if tpm is not None:
        stmt = stmt.where(RateWindow.tokens < tpm)
    admitted = (
        rows_changed(
            session.execute(
                stmt.values(
                    requests=RateWindow.requests + 1, tokens=RateWindow.tokens + prompt_tokens
                ).execution_options(synchronize_session=False)
            )
        )
        == 1
    )
    row = session.get(RateWindow, (subject, window), populate_existing=True)
    used_requests, used_tokens = (row.requests, row.tokens) if row else (0, 0)
    headers: dict[str, str] = {}
    if rpm is not None:
        headers |= {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - used_requests)),
            "x-ratelimit-reset-requests": f"{reset}s",
        }
    if tpm is not None:
        headers |= {
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(max(0, tpm - used_tokens)),
            "x-ratelimit-reset-tokens": f"{reset}s",
        }
    if not admitted:
        session.commit()
        which = "requests" if rpm is not None and used_requests >= rpm else "tokens"
        limit = rpm if which == "requests" else tpm
        raise Problem(
            429,
            f"Rate limit reached: {limit} {which} per minute for {subject}. Retry in {reset}s.",
            kind="rate-limited",
            headers={"Retry-After": str(reset), **headers},
            extra={"limit": which, "limit_per_minute": limit, "retry_after_seconds": reset},
        )
    return headers


def add_tokens(session: Session, subject: str, tokens: int, now: float | None = None) -> None:
    if tokens <= 0:
        return
    window, _ = _window(time.time() if now is None else now)
    session.execute(
        update(RateWindow)
        .where(RateWindow.subject == subject, RateWindow.window_start == window)
        .values(tokens=RateWindow.tokens + tokens)
        .execution_options(synchronize_session=False)
    )


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def spent_this_month(session: Session, subject: str, now: dt.datetime) -> Decimal:
    total = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.cost_usd), 0)).where(
            UsageRecord.subject == subject, UsageRecord.created_at >= month_start(now)
        )
    )
    return Decimal(str(total or 0)).quantize(Decimal("0.000001"))


def check_budget(session: Session, subject: str, policy: dict[str, Any], now: dt.datetime) -> None:
    budget = policy["monthly_budget_usd"]
    if budget is None:
        return
    spent = spent_this_month(session, subject, now)
    if spent >= budget:
        raise Problem(
            402,
            f"The monthly budget of {budget} USD for {subject} is used up ({spent} USD spent since "
            f"{month_start(now).date()}). Raise monthly_budget_usd in the key's policy or wait for next month.",
            kind="budget-exceeded",
            extra={
                "budget_usd": str(budget),
                "spent_usd": str(spent),
                "period_start": month_start(now).isoformat(),
            },
        )


def purge_windows(session: Session, now: float | None = None) -> int:
    window, _ = _window(time.time() if now is None else now)
    result = session.execute(delete(RateWindow).where(RateWindow.window_start < window - 1))
    return rows_changed(result)
