"""Logistics tables. Stock is an append-only ledger (:class:`StockMovement`);
``Item.quantity`` and ``Item.reserved`` are its running sums, kept in the same
transaction as each ledger row and guarded by CHECK constraints."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bhiv.core.db import Timestamps, UTCDateTime, new_metadata, string_enum, utcnow
from bhiv.core.outbox import Outbox


class Base(DeclarativeBase):
    metadata = new_metadata()


# Domain events (inventory.low_stock, shipment.status_changed), committed with
# the change that caused them and relayed to the integrations service.
OUTBOX = Outbox(Base.metadata, source="logistics")


class MovementType(enum.StrEnum):
    receipt = "receipt"
    adjustment = "adjustment"
    reservation = "reservation"
    release = "release"
    shipment = "shipment"


class ShipmentStatus(enum.StrEnum):
    created = "created"
    picked = "picked"
    shipped = "shipped"
    in_transit = "in_transit"
    delivered = "delivered"
    cancelled = "cancelled"


class Warehouse(Timestamps, Base):
    __tablename__ = "warehouses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(Text)


class Supplier(Timestamps, Base):
    __tablename__ = "suppliers"
    __table_args__ = (
        CheckConstraint("rating >= 0 AND rating <= 5", name="rating_range"),
        CheckConstraint("lead_time_days >= 0", name="lead_time_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    contact_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    rating: Mapped[Decimal] = mapped_column(Numeric(2, 1), default=Decimal("0"))
    lead_time_days: Mapped[int] = mapped_column(Integer, default=7)


class Item(Timestamps, Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_nonnegative"),
        CheckConstraint("reserved >= 0 AND reserved <= quantity", name="reserved_within_stock"),
        CheckConstraint("reorder_level >= 0", name="reorder_level_nonnegative"),
        CheckConstraint("unit_cost >= 0", name="unit_cost_nonnegative"),
        Index("ix_items_category", "category"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(100))
    warehouse_id: Mapped[int | None] = mapped_column(
        ForeignKey("warehouses.id", ondelete="RESTRICT"), index=True
    )
    supplier_id: Mapped[int | None] = mapped_column(
        ForeignKey("suppliers.id", ondelete="RESTRICT"), index=True
    )
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    reorder_level: Mapped[int] = mapped_column(Integer, default=0)
    unit_cost: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))

    warehouse: Mapped[Warehouse | None] = relationship(lazy="raise")
    supplier: Mapped[Supplier | None] = relationship(lazy="raise")

    @property
    def available(self) -> int:
        return self.quantity - self.reserved

    @property
    def low_stock(self) -> bool:
        return self.available <= self.reorder_level


class StockMovement(Base):
    """One ledger row; never updated or deleted while its item exists."""

    __tablename__ = "stock_movements"
    __table_args__ = (Index("ix_stock_movements_item_id_id", "item_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    type: Mapped[MovementType] = mapped_column(string_enum(MovementType, "movement_type"))
    quantity: Mapped[int] = mapped_column(Integer)
    on_hand_delta: Mapped[int] = mapped_column(Integer)
    reserved_delta: Mapped[int] = mapped_column(Integer)
    reference: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    shipment_id: Mapped[int | None] = mapped_column(
        ForeignKey("shipments.id", ondelete="SET NULL"), index=True
    )
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Shipment(Timestamps, Base):
    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str | None] = mapped_column(String(100), unique=True)
    status: Mapped[ShipmentStatus] = mapped_column(
        string_enum(ShipmentStatus, "shipment_status"), default=ShipmentStatus.created, index=True
    )
    warehouse_id: Mapped[int | None] = mapped_column(
        ForeignKey("warehouses.id", ondelete="RESTRICT")
    )
    destination: Mapped[str] = mapped_column(Text)
    carrier: Mapped[str | None] = mapped_column(String(100))
    tracking_number: Mapped[str | None] = mapped_column(String(100))

    lines: Mapped[list[ShipmentLine]] = relationship(
        back_populates="shipment",
        cascade="all, delete-orphan",
        order_by="ShipmentLine.id",
        lazy="selectin",
    )
    events: Mapped[list[TrackingEvent]] = relationship(
        back_populates="shipment",
        cascade="all, delete-orphan",
        order_by="TrackingEvent.id",
        lazy="raise",
    )


class ShipmentLine(Base):
    __tablename__ = "shipment_lines"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shipment_id: Mapped[int] = mapped_column(
        ForeignKey("shipments.id", ondelete="CASCADE"), index=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="RESTRICT"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)

    shipment: Mapped[Shipment] = relationship(back_populates="lines")


class TrackingEvent(Base):
    __tablename__ = "tracking_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shipment_id: Mapped[int] = mapped_column(
        ForeignKey("shipments.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[ShipmentStatus] = mapped_column(string_enum(ShipmentStatus, "tracking_status"))
    location: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))

    shipment: Mapped[Shipment] = relationship(back_populates="events")
