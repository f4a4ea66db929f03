"""Work that runs beside a service's requests for as long as the service does.

Every service has such loops: the outbox relay, webhook delivery, sync
scheduling, the gateway's health probes and OpenAPI learning, the workflow
engine, the LLM service's purge. Each is started by a lifespan hook and must
stop when the app does: told first (the ``stop`` event it checks between
iterations), given a grace period to finish the iteration in hand, then
cancelled. ``background`` does that once for all of them; ``repeat`` and
``sleep_unless_stopped`` pace a loop so that a stop is noticed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from bhiv.core import tracing

log = logging.getLogger("bhiv.core.background")

Work = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile; True when it was."""
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def repeat(
    stop: asyncio.Event,
    interval: float,
    step: Callable[[], Awaitable[Any]],
    *,
    what: str,
) -> None:
    """Await ``step`` every ``interval`` seconds until ``stop``. A failing step is
    logged and tried again next time: one bad iteration never ends the loop."""
    while not stop.is_set():
        try:
            await step()
        except Exception:
            log.exception("%s failed; trying again in %ss", what, interval)
        if await sleep_unless_stopped(stop, interval):
            return


@asynccontextmanager
async def background(name: str, work: Work, *, grace: float = 10.0) -> AsyncIterator[asyncio.Event]:
    """Run ``work(stop)`` as a task named ``name`` while the block runs.

    On exit ``stop`` is set and the task has ``grace`` seconds to return before it
    is cancelled (0: cancelled at once, for work that is safe to abandon). A task
    that ends with an error is logged when it ends, not only at shutdown.
    """
    stop = asyncio.Event()
    # The task inherits the context it is created in: its polls make no spans
    # (tracing.untraced); the work it wants traced opens a tracing.span.
    with tracing.untraced():
        task = asyncio.create_task(work(stop), name=name)
    task.add_done_callback(_report_failure)
    try:
        yield stop
    finally:
        stop.set()
        if grace > 0:
            with suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), grace)
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s stopped: %r", task.get_name(), error, exc_info=error)
