from __future__ import annotations

import asyncio

import pytest

from bhiv.operator.graph import Node, cycles, dependency_state
from bhiv.operator.status import Condition, merge_conditions, transitions
from bhiv.operator.workqueue import WorkQueue


def nodes(**edges: tuple[tuple[str, ...], bool]) -> dict[str, Node]:
    return {name: Node(deps, ready) for name, (deps, ready) in edges.items()}


class TestGraph:
    def test_every_member_of_a_cycle_reports_it(self) -> None:
        g = nodes(a=(("b",), False), b=(("c",), False), c=(("a",), False), d=(("a",), False))
        found = cycles(g)
        assert found == {"a": ("a", "b", "c"), "b": ("a", "b", "c"), "c": ("a", "b", "c")}
        for name in "abc":
            assert dependency_state(name, g, found).reason == "DependencyCycle"
        # d depends on a cycle but is not in it: it waits.
        assert dependency_state("d", g, found).reason == "WaitingForDependencies"

    def test_missing_waiting_and_ready(self) -> None:
        g = nodes(
            a=((), True),
            b=(("a", "ghost"), False),
            c=(("a",), False),
            d=(("c",), False),
            e=((), False),
        )
        found = cycles(g)
        missing = dependency_state("b", g, found)
        assert (missing.reason, missing.waiting_for, missing.satisfied) == (
            "DependencyNotFound",
            ("ghost",),
            False,
        )
        assert dependency_state("c", g, found).satisfied
        waiting = dependency_state("d", g, found)
        assert (waiting.reason, waiting.waiting_for) == ("WaitingForDependencies", ("c",))
        assert dependency_state("e", g, found).reason == "NoDependencies"

    def test_long_chains_do_not_recurse(self) -> None:
        g = {f"m{i}": Node((f"m{i + 1}",) if i < 4999 else (), True) for i in range(5000)}
        assert cycles(g) == {}
        g["m4999"] = Node(("m0",), True)
        assert len(cycles(g)) == 5000


class TestConditions:
    def test_transition_time_kept_while_status_holds(self) -> None:
        first = merge_conditions(
            [], [Condition("Ready", False, "Waiting", "x")], 1, "2026-01-01T00:00:00Z"
        )
        same = merge_conditions(
            first, [Condition("Ready", False, "Other", "y")], 2, "2026-01-02T00:00:00Z"
        )
        assert (
            same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
            and same[0]["observedGeneration"] == 2
        )
        flipped = merge_conditions(
            same, [Condition("Ready", True, "Ok", "z")], 2, "2026-01-03T00:00:00Z"
        )
        assert (
            flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
            and flipped[0]["status"] == "True"
        )
        assert [c["reason"] for c in transitions(same, flipped)] == ["Ok"]
        assert transitions(flipped, flipped) == []


class TestWorkQueue:
    def test_dedupes_reruns_dirty_keys_and_retries_failures(self) -> None:
        calls: list[str] = []
        active: set[str] = set()
        fail_once = {"flaky"}

        async def handle(key: object) -> None:
            k = str(key)
            assert k not in active, "a key must never run twice at once"
            active.add(k)
            calls.append(k)
            try:
                await asyncio.sleep(0.01)
                if k in fail_once:
                    fail_once.discard(k)
                    raise RuntimeError("boom")
                if k == "a" and calls.count("a") == 1:
                    queue.add("a")  # changed while being processed: runs once more
            finally:
                active.discard(k)

        queue = WorkQueue(handle, workers=3, base_delay=0.01)

        async def main() -> None:
            for key in ("a", "a", "a", "b", "flaky"):
                queue.add(key)
            runner = asyncio.create_task(queue.run())
            await asyncio.sleep(0.3)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

        asyncio.run(main())
        assert calls.count("a") == 2 and calls.count("b") == 1 and calls.count("flaky") == 2

    def test_reports_how_long_keys_wait(self) -> None:
        waits: list[float] = []

        async def handle(key: object) -> None:
            await asyncio.sleep(0)

        queue = WorkQueue(handle, workers=1, observe_wait=waits.append)

        async def main() -> float:
            assert queue.oldest_wait() == 0.0
            queue.add("a")
            await asyncio.sleep(0.05)
            queue.add("b")
            oldest = queue.oldest_wait()
            runner = asyncio.create_task(queue.run())
            await asyncio.sleep(0.05)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
            return oldest

        oldest = asyncio.run(main())
        assert oldest >= 0.05  # "a" had waited that long when "b" came
        assert len(waits) == 2 and waits[0] >= 0.05
        assert queue.oldest_wait() == 0.0
