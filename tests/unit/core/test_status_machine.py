"""Status workflows and their 409 problem."""

from __future__ import annotations

import enum

import pytest

from bhiv.core.errors import Problem
from bhiv.core.status_machine import StatusMachine


class Door(enum.StrEnum):
    open = "open"
    closed = "closed"
    locked = "locked"
    gone = "gone"


DOOR = StatusMachine(
    "Door",
    {
        Door.open: {Door.closed},
        Door.closed: {Door.open, Door.locked},
        Door.locked: {Door.closed},
        Door.gone: (),
    },
)


def test_allowed_is_sorted_and_empty_for_a_final_status() -> None:
    assert DOOR.allowed(Door.closed) == ["locked", "open"]
    assert DOOR.allowed(Door.gone) == []


def test_an_allowed_change_passes() -> None:
    DOOR.check(7, Door.closed, Door.locked)


@pytest.mark.parametrize(
    ("current", "target", "allowed", "hint"),
    [
        (Door.open, Door.locked, ["closed"], "Allowed next: closed."),
        (Door.gone, Door.open, [], "none (final status)"),
    ],
)
def test_an_illegal_change_is_a_409_naming_current_and_allowed(
    current: Door, target: Door, allowed: list[str], hint: str
) -> None:
    with pytest.raises(Problem) as caught:
        DOOR.check(7, current, target)
    problem = caught.value
    assert (problem.status, problem.kind) == (409, "illegal-transition")
    assert problem.extra == {"current": current.value, "allowed": allowed}
    assert problem.detail.startswith(f"Door 7 is {current.value}; it cannot become {target.value}.")
    assert hint in problem.detail


def test_a_target_without_its_own_entry_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="locked"):
        StatusMachine("Door", {Door.open: {Door.locked}})
