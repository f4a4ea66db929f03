"""Inventory analytics, computed by the database in a handful of aggregate queries."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from bhiv.core.db import SessionDep
from bhiv.core.routing import service_router
from bhiv.logistics.models import Item, Shipment, Warehouse
from bhiv.logistics.schemas import GroupTotals, InventoryAnalytics

router = service_router(tags=["analytics"])

_units = func.coalesce(func.sum(Item.quantity), 0)
_value = func.coalesce(func.sum(Item.quantity * Item.unit_cost), 0)


def _money(value: object) -> Decimal:
    return Decimal(str(value or 0)).quantize(Decimal("0.01"))


@router.get(
    "/analytics/inventory",
    response_model=InventoryAnalytics,
    summary="Inventory value and stock health",
)
def inventory_analytics(session: SessionDep) -> InventoryAnalytics:
    items, units, reserved, value = session.execute(
        select(func.count(Item.id), _units, func.coalesce(func.sum(Item.reserved), 0), _value)
    ).one()
    low = session.scalar(
        select(func.count(Item.id)).where(Item.quantity - Item.reserved <= Item.reorder_level)
    )
    by_category = [
        GroupTotals(key=cat, items=n, units=u, value=_money(v))
        for cat, n, u, v in session.execute(
            select(Item.category, func.count(Item.id), _units, _value)
            .group_by(Item.category)
            .order_by(Item.category)
        )
    ]
    by_warehouse = [
        GroupTotals(key=code, items=n, units=u, value=_money(v))
        for code, n, u, v in session.execute(
            select(Warehouse.code, func.count(Item.id), _units, _value)
            .select_from(Item)
            .outerjoin(Warehouse, Item.warehouse_id == Warehouse.id)
            .group_by(Warehouse.code)
            .order_by(Warehouse.code)
        )
    ]
    shipments = {
        status.value: n
        for status, n in session.execute(
            select(Shipment.status, func.count(Shipment.id)).group_by(Shipment.status)
        )
    }
    return InventoryAnalytics(
        items=items,
        units=units,
        reserved_units=reserved,
        inventory_value=_money(value),
        low_stock_count=low or 0,
        by_category=by_category,
        by_warehouse=by_warehouse,
        shipments_by_status=shipments,
    )
