"""bhiv.core.background: how every service's loops start, pace and stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bhiv.core.background import background, repeat, sleep_unless_stopped

pytestmark = pytest.mark.unit


def test_work_that_honours_stop_finishes_its_iteration() -> None:
    done: list[str] = []

    async def work(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.01)  # the iteration in hand
        done.append("finished")

    async def main() -> None:
        async with background("polite", work, grace=5):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert done == ["finished"]


def test_work_that_outlives_its_grace_is_cancelled() -> None:
    seen: list[str] = []

    async def work(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(60)  # ignores stop
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with background("stubborn", work, grace=0.05):
            await asyncio.sleep(0)
            started = loop.time()
        return loop.time() - started

    elapsed = asyncio.run(main())
    assert seen == ["cancelled"]
    assert elapsed < 30  # not the work's 60 s


def test_grace_zero_cancels_at_once() -> None:
    seen: list[str] = []

    async def work(stop: asyncio.Event) -> None:
        try:
            await stop.wait()
            await asyncio.sleep(60)
            seen.append("finished")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        async with background("abandoned", work, grace=0):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert seen == ["cancelled"]


def test_a_failure_is_logged_when_it_happens(caplog: pytest.LogCaptureFixture) -> None:
    async def work(stop: asyncio.Event) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        async with background("fragile", work):
            await asyncio.sleep(0.01)
            assert "background task fragile stopped" in caplog.text

    with caplog.at_level(logging.ERROR, "bhiv.core.background"):
        asyncio.run(main())


def test_repeat_survives_a_failing_step_and_stops_promptly() -> None:
    calls: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("one bad iteration")
        if len(calls) == 3:
            third.set()

    async def main() -> None:
        async with background("ticker", lambda stop: repeat(stop, 0.01, step, what="tick")):
            await asyncio.wait_for(third.wait(), 30)

    asyncio.run(main())
    assert len(calls) >= 3


def test_sleep_unless_stopped_says_whether_it_was_stopped() -> None:
    async def main() -> tuple[bool, bool]:
        stop = asyncio.Event()
        timed_out = await sleep_unless_stopped(stop, 0.01)
        stop.set()
        stopped = await sleep_unless_stopped(stop, 60)
        return timed_out, stopped

    assert asyncio.run(main()) == (False, True)
