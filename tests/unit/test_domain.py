"""Pure domain rules: the ledger's deltas, the shipment state machine, the catalog."""

from __future__ import annotations

import pytest

from bhiv import catalog
from bhiv.core.errors import _location_and_field
from bhiv.core.pagination import like_pattern
from bhiv.logistics.models import MovementType, ShipmentStatus
from bhiv.logistics.routes.shipments import TRANSITIONS
from bhiv.logistics.stock import deltas


@pytest.mark.parametrize(
    ("kind", "qty", "expected"),
    [
        (MovementType.receipt, 5, (5, 0)),
        (MovementType.adjustment, -3, (-3, 0)),
        (MovementType.reservation, 2, (0, 2)),
        (MovementType.release, 2, (0, -2)),
        (MovementType.shipment, 4, (-4, 0)),
    ],
)
def test_movement_deltas(kind: MovementType, qty: int, expected: tuple[int, int]) -> None:
    assert deltas(kind, qty) == expected


def test_every_status_has_transitions_and_final_states_are_final() -> None:
    assert set(TRANSITIONS) == set(ShipmentStatus)
    assert (
        TRANSITIONS[ShipmentStatus.delivered]
        == TRANSITIONS[ShipmentStatus.cancelled]
        == frozenset()
    )
    # The happy path is reachable from created.
    path = [
        ShipmentStatus.created,
        ShipmentStatus.picked,
        ShipmentStatus.shipped,
        ShipmentStatus.in_transit,
        ShipmentStatus.delivered,
    ]
    assert all(b in TRANSITIONS[a] for a, b in zip(path, path[1:], strict=False))


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("body", "lines", 0, "sku"), ("body", "lines.0.sku")),
        (("query", "limit"), ("query", "limit")),
        (("body",), ("body", "body")),
    ],
)
def test_validation_locations(loc: tuple, expected: tuple[str, str]) -> None:
    assert _location_and_field(loc) == expected


def test_like_pattern_escapes_wildcards() -> None:
    assert like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"


def test_startup_order_follows_the_seed() -> None:
    stages = [[e.stage for e in stage] for stage in catalog.in_startup_order()]
    assert all(len(set(s)) == 1 for s in stages)
    assert [s[0] for s in stages] == sorted(s[0] for s in stages)
    with pytest.raises(KeyError, match="known services"):
        catalog.get("nope")
