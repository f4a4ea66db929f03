"""Retry delays for work whose attempts are counted in a database, not in a loop.

tenacity's wait strategies compute a delay from a retry state; a worker that
persists ``attempts`` and ``next_attempt_at`` between runs (and restarts) asks
the same strategy for the delay after attempt *n* here.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_exponential


def delay_after(strategy: wait_base, attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failure (1-based) under ``strategy``."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return float(strategy(state))


def exponential(initial: float, base: float, maximum: float) -> wait_exponential:
    """``initial * base**(n-1)`` seconds after the n-th failure, capped at ``maximum``."""
    return wait_exponential(multiplier=initial, exp_base=base, max=maximum)


def with_jitter(delay: float, ratio: float) -> float:
    """``delay`` stretched by up to ``ratio`` of itself.

    Proportional rather than tenacity's fixed-seconds jitter: failures that
    happened together (an outage) spread out in proportion to how long they
    wait, hours apart late in a schedule, not a fixed second apart.
    """
    return delay * (1 + random.uniform(0, ratio))
