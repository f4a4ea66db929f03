"""Status machines: which status changes a resource allows, and the one 409
problem every service answers for a change it does not."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from bhiv.core.errors import Problem

S = TypeVar("S", bound=enum.StrEnum)


class StatusMachine(Generic[S]):
    """The allowed next statuses of each status of one kind of resource."""

    def __init__(self, what: str, transitions: Mapping[S, Iterable[S]]) -> None:
        self.what = what
        self.transitions: dict[S, frozenset[S]] = {
            s: frozenset(nxt) for s, nxt in transitions.items()
        }
        unknown = {t for nxt in self.transitions.values() for t in nxt} - set(self.transitions)
        if unknown:
            # A typo in a table would otherwise surface as a KeyError on some request.
            raise ValueError(
                f"{what} workflow: targets without an entry of their own: {sorted(unknown)}"
            )

    def allowed(self, current: S) -> list[str]:
        """The statuses ``current`` may become, sorted; empty for a final status."""
        return sorted(s.value for s in self.transitions[current])

    def check(self, key: object, current: S, target: S) -> None:
        """Raise a 409 ``illegal-transition`` problem unless ``current`` may become ``target``.

        The problem carries ``current`` and ``allowed`` so a client can offer the
        legal next steps without parsing the message.
        """
        if target in self.transitions[current]:
            return
        allowed = self.allowed(current)
        raise Problem(
            409,
            f"{self.what} {key} is {current.value}; it cannot become {target.value}. "
            f"Allowed next: {', '.join(allowed) or 'none (final status)'}.",
            kind="illegal-transition",
            extra={"current": current.value, "allowed": allowed},
        )
