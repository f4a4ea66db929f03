"""The stock ledger: every change to an item's stock is one movement row plus
one guarded UPDATE of the item's running sums, in the same transaction.

The UPDATE carries its own precondition (``WHERE quantity + d >= reserved + r``),
so two concurrent reservations can never both take the last unit: on
PostgreSQL the second UPDATE waits for the first's row lock and re-checks the
condition; on SQLite writers are serialised by ``BEGIN IMMEDIATE``. A
precondition that fails matches no row, and the caller gets a 409.

A movement that takes an item's available stock from above its reorder level
to at or below it publishes ``inventory.low_stock`` through the outbox, in the
same transaction.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from bhiv.core import Problem, conflict, not_found, utcnow
from bhiv.logistics.models import OUTBOX, Item, MovementType, StockMovement


def deltas(kind: MovementType, quantity: int) -> tuple[int, int]:
    """(on-hand delta, reserved delta) of a movement."""
    match kind:
        case MovementType.receipt | MovementType.adjustment:
            return quantity, 0
        case MovementType.reservation:
            return 0, quantity
        case MovementType.release:
            return 0, -quantity
        case MovementType.shipment:
            return -quantity, 0
    raise ValueError(kind)


def record(
    session: Session,
    item_id: int,
    kind: MovementType,
    quantity: int,
    *,
    actor: str,
    on_hand_delta: int | None = None,
    reserved_delta: int | None = None,
    reference: str | None = None,
    note: str | None = None,
    shipment_id: int | None = None,
) -> StockMovement:
    """Apply one movement; raises 404/409 and changes nothing when it cannot apply.

    Does not commit: the caller commits, possibly together with other movements.
    """
    d_on_hand, d_reserved = deltas(kind, quantity)
    if on_hand_delta is not None:
        d_on_hand = on_hand_delta
    if reserved_delta is not None:
        d_reserved = reserved_delta

    after = session.execute(
        update(Item)
        .where(
            Item.id == item_id,
            Item.quantity + d_on_hand >= Item.reserved + d_reserved,
            Item.reserved + d_reserved >= 0,
        )
        .values(
            quantity=Item.quantity + d_on_hand,
            reserved=Item.reserved + d_reserved,
            updated_at=utcnow(),
        )
        .returning(
            Item.sku, Item.name, Item.quantity, Item.reserved, Item.reorder_level, Item.supplier_id
        )
        .execution_options(synchronize_session=False)
    ).first()
    if after is None:
        item = session.get(Item, item_id)
        if item is None:
            raise not_found("Item", item_id)
        raise _insufficient(item, kind, quantity)

    movement = StockMovement(
        item_id=item_id,
        type=kind,
        quantity=quantity,
        on_hand_delta=d_on_hand,
        reserved_delta=d_reserved,
        reference=reference,
        note=note,
        shipment_id=shipment_id,
        actor=actor,
    )
    session.add(movement)
    session.flush()
    available = after.quantity - after.reserved
    if available - (d_on_hand - d_reserved) > after.reorder_level >= available:
        OUTBOX.publish(
            session,
            "inventory.low_stock",
            {
                "item_id": item_id,
                "sku": after.sku,
                "name": after.name,
                "available": available,
                "quantity": after.quantity,
                "reserved": after.reserved,
                "reorder_level": after.reorder_level,
                "supplier_id": after.supplier_id,
                "movement": {
                    "id": movement.id,
                    "type": kind.value,
                    "quantity": quantity,
                    "reference": reference,
                },
            },
        )
    return movement


def _insufficient(item: Item, kind: MovementType, quantity: int) -> Problem:
    if kind in (MovementType.release,):
        detail = f"Cannot release {quantity} of {item.sku}: only {item.reserved} reserved."
    elif kind == MovementType.adjustment:
        detail = (
            f"Cannot adjust {item.sku} by {quantity}: {item.quantity} on hand, {item.reserved} reserved; "
            "stock on hand may not fall below what is reserved."
        )
    else:
        detail = f"Only {item.available} of {item.sku} available; {quantity} requested."
    return conflict(
        detail,
        sku=item.sku,
        available=item.available,
        reserved=item.reserved,
        quantity=item.quantity,
    )
