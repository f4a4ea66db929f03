"""Inventory items, their stock ledger and reorder alerts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bhiv.core import (
    Identity,
    Page,
    PageParams,
    current_identity,
    page_params,
    paginate,
)
from bhiv.core.crud import (
    apply_patch,
    created,
    deleted,
    get_or_404,
    require_reference,
    unique_as_conflict,
)
from bhiv.core.db import SessionDep
from bhiv.core.errors import conflict, not_found
from bhiv.core.fields import StorableText
from bhiv.core.pagination import like_pattern
from bhiv.core.routing import service_router
from bhiv.logistics import stock
from bhiv.logistics.models import (
    Item,
    MovementType,
    ShipmentLine,
    StockMovement,
    Supplier,
    Warehouse,
)
from bhiv.logistics.schemas import (
    ItemCreate,
    ItemRead,
    ItemUpdate,
    MovementCreate,
    MovementRead,
    MovementResult,
    ReorderAlert,
    SupplierRead,
)

router = service_router(tags=["inventory"])
ItemId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Item ID.")]

item_page = page_params(
    {
        "id": Item.id,
        "sku": Item.sku,
        "name": Item.name,
        "category": Item.category,
        "quantity": Item.quantity,
        "unit_cost": Item.unit_cost,
        "created_at": Item.created_at,
        "updated_at": Item.updated_at,
    },
    default_sort="id",
)


def _fresh(session: Session, item_id: int) -> Item:
    """The item as the ledger's guarded UPDATE left it (read before committing)."""
    item = session.get(Item, item_id, populate_existing=True)
    if item is None:
        raise not_found("Item", item_id)
    return item


@router.get("/inventory", response_model=Page[ItemRead], summary="List and search items")
def list_items(
    session: SessionDep,
    params: Annotated[PageParams, Depends(item_page)],
    q: Annotated[
        Annotated[str, StorableText] | None,
        Query(max_length=200, description="Search SKU, name and description."),
    ] = None,
    category: Annotated[
        Annotated[str, StorableText] | None, Query(max_length=100, description="Exact category.")
    ] = None,
    warehouse_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    supplier_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    low_stock: Annotated[
        bool | None, Query(description="Only items at (or above) their reorder level.")
    ] = None,
    quantity_min: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    quantity_max: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Page[ItemRead]:
    stmt = select(Item)
    if q:
        pattern = like_pattern(q)
        stmt = stmt.where(
            or_(
                Item.sku.ilike(pattern, escape="\\"),
                Item.name.ilike(pattern, escape="\\"),
                Item.description.ilike(pattern, escape="\\"),
            )
        )
    if category is not None:
        stmt = stmt.where(Item.category == category)
    if warehouse_id is not None:
        stmt = stmt.where(Item.warehouse_id == warehouse_id)
    if supplier_id is not None:
        stmt = stmt.where(Item.supplier_id == supplier_id)
    if low_stock is not None:
        is_low = Item.quantity - Item.reserved <= Item.reorder_level
        stmt = stmt.where(is_low if low_stock else ~is_low)
    if quantity_min is not None:
        stmt = stmt.where(Item.quantity >= quantity_min)
    if quantity_max is not None:
        stmt = stmt.where(Item.quantity <= quantity_max)
    return paginate(session, stmt, params, ItemRead.model_validate)


@router.post(
    "/inventory",
    response_model=ItemRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create an item",
    responses={409: {"description": "The SKU exists already."}},
)
def create_item(
    body: ItemCreate,
    session: SessionDep,
    response: Response,
    identity: Identity = Depends(current_identity),
) -> ItemRead:
    require_reference(session, Warehouse, body.warehouse_id, "warehouse_id")
    require_reference(session, Supplier, body.supplier_id, "supplier_id")
    item = Item(**body.model_dump(exclude={"quantity"}), quantity=0, reserved=0)
    with unique_as_conflict(session, "items", {"sku": body.sku}, "item"):
        session.add(item)
        session.flush()
        if body.quantity:
            stock.record(
                session,
                item.id,
                MovementType.receipt,
                body.quantity,
                actor=identity.subject,
                note="opening stock",
            )
        return created(
            session,
            response,
            item,
            lambda i: ItemRead.model_validate(_fresh(session, i.id)),
            "/inventory",
        )


@router.get("/inventory/{item_id}", response_model=ItemRead, summary="Get an item")
def get_item(item_id: ItemId, session: SessionDep) -> ItemRead:
    return ItemRead.model_validate(get_or_404(session, Item, item_id))


@router.get("/inventory/sku/{sku}", response_model=ItemRead, summary="Get an item by SKU")
def get_item_by_sku(sku: Annotated[str, Path(max_length=64)], session: SessionDep) -> ItemRead:
    item = session.scalar(select(Item).where(Item.sku == sku))
    if item is None:
        raise not_found("Item with SKU", sku)
    return ItemRead.model_validate(item)


@router.patch("/inventory/{item_id}", response_model=ItemRead, summary="Change an item's details")
def update_item(item_id: ItemId, body: ItemUpdate, session: SessionDep) -> ItemRead:
    item = get_or_404(session, Item, item_id)
    changes = body.model_dump(exclude_unset=True)
    require_reference(session, Warehouse, changes.get("warehouse_id"), "warehouse_id")
    require_reference(session, Supplier, changes.get("supplier_id"), "supplier_id")
    apply_patch(item, body)
    session.commit()
    return ItemRead.model_validate(item)


@router.delete(
    "/inventory/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an item with no stock",
    responses={409: {"description": "The item still has stock, reservations or shipments."}},
)
def delete_item(item_id: ItemId, session: SessionDep) -> Response:
    item = get_or_404(session, Item, item_id)
    if item.quantity or item.reserved:
        raise conflict(
            f"Item {item.sku} still has {item.quantity} on hand and {item.reserved} reserved; "
            "adjust its stock to 0 before deleting it."
        )
    if (
        session.scalar(select(ShipmentLine.id).where(ShipmentLine.item_id == item_id).limit(1))
        is not None
    ):
        raise conflict(f"Item {item.sku} appears on shipments and is kept for their history.")
    return deleted(session, item)


@router.post(
    "/inventory/{item_id}/movements",
    response_model=MovementResult,
    status_code=status.HTTP_201_CREATED,
    summary="Record a stock movement",
    description="Appends to the item's ledger and updates its stock atomically. "
    "A movement that would leave negative stock, or reserve more than is available, is refused with 409.",
    responses={409: {"description": "Not enough stock."}},
)
def create_movement(
    item_id: ItemId,
    body: MovementCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> MovementResult:
    movement = stock.record(
        session,
        item_id,
        body.type,
        body.quantity,
        actor=identity.subject,
        reference=body.reference,
        note=body.note,
    )
    result = MovementResult(
        movement=MovementRead.model_validate(movement),
        item=ItemRead.model_validate(_fresh(session, item_id)),
    )
    session.commit()
    return result


movement_page = page_params(
    {"id": StockMovement.id, "created_at": StockMovement.created_at}, default_sort="id"
)


@router.get(
    "/inventory/{item_id}/movements", response_model=Page[MovementRead], summary="An item's ledger"
)
def list_movements(
    item_id: ItemId,
    session: SessionDep,
    params: Annotated[PageParams, Depends(movement_page)],
    type: Annotated[MovementType | None, Query(description="Only this kind of movement.")] = None,
) -> Page[MovementRead]:
    get_or_404(session, Item, item_id)
    stmt = select(StockMovement).where(StockMovement.item_id == item_id)
    if type is not None:
        stmt = stmt.where(StockMovement.type == type)
    return paginate(session, stmt, params, MovementRead.model_validate)


@router.get(
    "/alerts/reorder",
    response_model=list[ReorderAlert],
    summary="Items to reorder",
    description="Items whose available stock is at or below their reorder level, most short first.",
)
def reorder_alerts(
    session: SessionDep,
    warehouse_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ReorderAlert]:
    available = Item.quantity - Item.reserved
    stmt = (
        select(Item, Supplier)
        .outerjoin(Supplier, Item.supplier_id == Supplier.id)
        .where(available <= Item.reorder_level)
        .order_by((Item.reorder_level - available).desc(), Item.id)
        .limit(limit)
    )
    if warehouse_id is not None:
        stmt = stmt.where(Item.warehouse_id == warehouse_id)
    alerts = []
    for item, supplier in session.execute(stmt).all():
        alerts.append(
            ReorderAlert(
                item=ItemRead.model_validate(item),
                shortfall=item.reorder_level - item.available + 1,
                supplier=SupplierRead.model_validate(supplier) if supplier else None,
                expected_days=supplier.lead_time_days if supplier else None,
            )
        )
    return alerts
