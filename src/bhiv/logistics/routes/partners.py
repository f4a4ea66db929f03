"""Suppliers and warehouses: plain resources on the shared resource router."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from bhiv.core.errors import conflict
from bhiv.core.resources import resource_router
from bhiv.logistics.models import Item, Shipment, Supplier, Warehouse
from bhiv.logistics.schemas import (
    SupplierCreate,
    SupplierRead,
    SupplierUpdate,
    WarehouseCreate,
    WarehouseRead,
    WarehouseUpdate,
)


def supplier_filters(
    rating_min: Annotated[Decimal | None, Query(ge=0, le=5, description="Minimum rating.")] = None,
    lead_time_max: Annotated[
        int | None, Query(ge=0, le=365, description="Maximum lead time in days.")
    ] = None,
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if rating_min is not None:
        clauses.append(Supplier.rating >= rating_min)
    if lead_time_max is not None:
        clauses.append(Supplier.lead_time_days <= lead_time_max)
    return clauses


def _refuse_if_used(column: Any, what: str) -> Any:
    def guard(session: Session, obj: Any) -> None:
        if session.scalar(select(column).where(column == obj.id).limit(1)) is not None:
            raise conflict(
                f"{what} {obj.id} is still referenced by items or shipments; move them first."
            )

    return guard


def _warehouse_in_use(session: Session, obj: Warehouse) -> None:
    _refuse_if_used(Item.warehouse_id, "Warehouse")(session, obj)
    _refuse_if_used(Shipment.warehouse_id, "Warehouse")(session, obj)


suppliers = resource_router(
    path="/suppliers",
    what="supplier",
    model=Supplier,
    create_schema=SupplierCreate,
    update_schema=SupplierUpdate,
    read_schema=SupplierRead,
    unique=("name",),
    search=(Supplier.name, Supplier.contact_name, Supplier.email),
    sortable={
        "id": Supplier.id,
        "name": Supplier.name,
        "rating": Supplier.rating,
        "lead_time_days": Supplier.lead_time_days,
        "created_at": Supplier.created_at,
    },
    filters=supplier_filters,
    before_delete=_refuse_if_used(Item.supplier_id, "Supplier"),
    tag="suppliers",
)

warehouses = resource_router(
    path="/warehouses",
    what="warehouse",
    model=Warehouse,
    create_schema=WarehouseCreate,
    update_schema=WarehouseUpdate,
    read_schema=WarehouseRead,
    unique=("code",),
    search=(Warehouse.code, Warehouse.name, Warehouse.address),
    sortable={
        "id": Warehouse.id,
        "code": Warehouse.code,
        "name": Warehouse.name,
        "created_at": Warehouse.created_at,
    },
    before_delete=_warehouse_in_use,
    tag="warehouses",
)
