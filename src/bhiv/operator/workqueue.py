"""A deduplicating, rate-limited work queue of module keys (as in controller-runtime).

Watch events only *name* what to reconcile; many events for one module
collapse into one pending key, a key is never processed by two workers at
once, a key that changes while being processed runs once more afterwards, and
a failing key is retried with exponential backoff instead of hot-looping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("bhiv.operator.workqueue")


class WorkQueue:
    def __init__(
        self,
        handler: Callable[[Hashable], Awaitable[None]],
        *,
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._handler = handler
        # Told how long each key waited between being queued and a worker taking it.
        self._observe_wait = observe_wait
        self._workers = workers
        self._base, self._max = base_delay, max_delay
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._pending: dict[Hashable, float] = {}  # queued, not yet picked up: since when
        self._active: set[Hashable] = set()  # being processed now
        self._dirty: set[Hashable] = set()  # added again while active
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def add(self, key: Hashable) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._pending:
            self._pending[key] = time.monotonic()
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = loop.call_later(delay, fire)

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting queued key has waited (0 when none waits)."""
        # Insertion order: the first pending key is the oldest.
        oldest = next(iter(self._pending.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    async def run(self) -> None:
        workers = [
            asyncio.create_task(self._work(), name=f"bhiv-reconcile-{i}")
            for i in range(self._workers)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            for timer in self._timers.values():
                timer.cancel()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            queued = self._pending.pop(key, None)
            if queued is not None and self._observe_wait is not None:
                self._observe_wait(time.monotonic() - queued)
            self._active.add(key)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._max, self._base * 2 ** (failures - 1))
                log.exception(
                    "reconcile of %s failed (attempt %d); retrying in %.1fs", key, failures, delay
                )
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
