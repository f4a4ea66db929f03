"""Conditions and status per the Kubernetes API conventions (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONDITION_TYPES = ("Ready", "DependenciesReady", "Available", "Progressing")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_conditions(
    previous: Sequence[dict[str, Any]],
    new: Sequence[Condition],
    generation: int,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where the status did not change."""
    old = {c.get("type"): c for c in previous or ()}
    stamp = timestamp or now()
    out = []
    for cond in new:
        status = "Unknown" if cond.status is None else ("True" if cond.status else "False")
        before = old.get(cond.type) or {}
        changed = before.get("status") != status
        out.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": stamp if changed else before.get("lastTransitionTime", stamp),
            }
        )
    return out


def transitions(
    previous: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions whose status or reason changed: what deserves a Kubernetes Event."""
    old = {c.get("type"): (c.get("status"), c.get("reason")) for c in previous or ()}
    return [c for c in current if old.get(c["type"]) != (c["status"], c["reason"])]
