"""Request and response bodies. Every field is described and has an example,
so /docs is a usable reference on its own."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

from bhiv.core.fields import StorableText, UTCTimestamp
from bhiv.logistics.models import MovementType, ShipmentStatus

# Free text a database can store (no NUL, no lone surrogates: docs in bhiv.core.fields).
Text = Annotated[str, StorableText]
Text200 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), StorableText
]
Sku = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    ),
]
Code = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    ),
]
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- warehouses -------------------------------------------------------------------


class WarehouseCreate(_Model):
    code: Code = Field(description="Short unique code.", examples=["BLR-1"])
    name: Text200 = Field(description="Display name.", examples=["Bengaluru central"])
    address: Text | None = Field(
        None, max_length=2000, description="Postal address.", examples=["12 MG Road"]
    )


class WarehouseUpdate(_Model):
    code: Code | None = Field(None, description="Short unique code.", examples=["BLR-1"])
    name: Text200 | None = Field(None, description="Display name.", examples=["Bengaluru central"])
    address: Text | None = Field(
        None, max_length=2000, description="Postal address.", examples=["12 MG Road"]
    )


class WarehouseRead(_Read):
    id: int = Field(description="Warehouse ID.", examples=[1])
    code: str = Field(description="Short unique code.", examples=["BLR-1"])
    name: str = Field(description="Display name.", examples=["Bengaluru central"])
    address: str | None = Field(description="Postal address.", examples=["12 MG Road"])
    created_at: dt.datetime = Field(description="When it was created (UTC).")
    updated_at: dt.datetime = Field(description="When it last changed (UTC).")


# --- suppliers --------------------------------------------------------------------


class SupplierCreate(_Model):
    name: Text200 = Field(description="Unique supplier name.", examples=["Acme Components"])
    contact_name: Text | None = Field(
        None, max_length=200, description="Person to talk to.", examples=["Asha Rao"]
    )
    email: EmailStr | None = Field(
        None, description="Contact email.", examples=["orders@acme.example"]
    )
    phone: Text | None = Field(
        None, max_length=50, description="Contact phone.", examples=["+91 80 5555 0100"]
    )
    rating: Decimal = Field(
        Decimal("0"),
        ge=0,
        le=5,
        max_digits=2,
        decimal_places=1,
        description="Quality rating, 0-5.",
        examples=["4.5"],
    )
    lead_time_days: int = Field(
        7, ge=0, le=365, description="Days from order to delivery.", examples=[5]
    )


class SupplierUpdate(_Model):
    name: Text200 | None = Field(
        None, description="Unique supplier name.", examples=["Acme Components"]
    )
    contact_name: Text | None = Field(
        None, max_length=200, description="Person to talk to.", examples=["Asha Rao"]
    )
    email: EmailStr | None = Field(
        None, description="Contact email.", examples=["orders@acme.example"]
    )
    phone: Text | None = Field(
        None, max_length=50, description="Contact phone.", examples=["+91 80 5555 0100"]
    )
    rating: Decimal | None = Field(
        None,
        ge=0,
        le=5,
        max_digits=2,
        decimal_places=1,
        description="Quality rating, 0-5.",
        examples=["4.5"],
    )
    lead_time_days: int | None = Field(
        None, ge=0, le=365, description="Days from order to delivery.", examples=[5]
    )


class SupplierRead(_Read):
    id: int = Field(description="Supplier ID.", examples=[1])
    name: str = Field(description="Unique supplier name.", examples=["Acme Components"])
    contact_name: str | None = Field(description="Person to talk to.", examples=["Asha Rao"])
    email: str | None = Field(description="Contact email.", examples=["orders@acme.example"])
    phone: str | None = Field(description="Contact phone.", examples=["+91 80 5555 0100"])
    rating: Decimal = Field(description="Quality rating, 0-5.", examples=["4.5"])
    lead_time_days: int = Field(description="Days from order to delivery.", examples=[5])
    created_at: dt.datetime = Field(description="When it was created (UTC).")
    updated_at: dt.datetime = Field(description="When it last changed (UTC).")


# --- inventory --------------------------------------------------------------------


class ItemCreate(_Model):
    sku: Sku = Field(description="Unique stock-keeping unit.", examples=["WIDGET-001"])
    name: Text200 = Field(description="Item name.", examples=["Steel widget"])
    description: Text | None = Field(
        None, max_length=5000, description="Free text.", examples=["M6, zinc plated"]
    )
    category: Text | None = Field(
        None, max_length=100, description="Category for reports.", examples=["hardware"]
    )
    warehouse_id: RowId | None = Field(None, description="Where it is stored.", examples=[1])
    supplier_id: RowId | None = Field(None, description="Who supplies it.", examples=[1])
    quantity: Count = Field(
        0, description="Opening stock, recorded in the ledger as a receipt.", examples=[100]
    )
    reorder_level: Count = Field(
        0, description="Alert when available stock falls to this.", examples=[20]
    )
    unit_cost: Money = Field(Decimal("0"), description="Cost of one unit.", examples=["2.50"])


class ItemUpdate(_Model):
    """Stock levels are not editable here: post a movement to the ledger instead."""

    name: Text200 | None = Field(None, description="Item name.", examples=["Steel widget"])
    description: Text | None = Field(
        None, max_length=5000, description="Free text.", examples=["M6, zinc plated"]
    )
    category: Text | None = Field(
        None, max_length=100, description="Category for reports.", examples=["hardware"]
    )
    warehouse_id: RowId | None = Field(None, description="Where it is stored.", examples=[1])
    supplier_id: RowId | None = Field(None, description="Who supplies it.", examples=[1])
    reorder_level: Count | None = Field(
        None, description="Alert when available stock falls to this.", examples=[20]
    )
    unit_cost: Money | None = Field(None, description="Cost of one unit.", examples=["2.50"])


class ItemRead(_Read):
    id: int = Field(description="Item ID.", examples=[1])
    sku: str = Field(description="Unique stock-keeping unit.", examples=["WIDGET-001"])
    name: str = Field(description="Item name.", examples=["Steel widget"])
    description: str | None = Field(description="Free text.", examples=["M6, zinc plated"])
    category: str | None = Field(description="Category for reports.", examples=["hardware"])
    warehouse_id: int | None = Field(description="Where it is stored.", examples=[1])
    supplier_id: int | None = Field(description="Who supplies it.", examples=[1])
    quantity: int = Field(
        description="Units on hand: the sum of the ledger's on-hand deltas.", examples=[100]
    )
    reserved: int = Field(
        description="Units promised to shipments and reservations.", examples=[10]
    )
    available: int = Field(
        description="quantity - reserved: what can still be reserved.", examples=[90]
    )
    reorder_level: int = Field(
        description="Alert when available stock falls to this.", examples=[20]
    )
    unit_cost: Decimal = Field(description="Cost of one unit.", examples=["2.50"])
    low_stock: bool = Field(description="available <= reorder_level.", examples=[False])
    created_at: dt.datetime = Field(description="When it was created (UTC).")
    updated_at: dt.datetime = Field(description="When it last changed (UTC).")


class MovementCreate(_Model):
    type: MovementType = Field(
        description="receipt: +on hand; adjustment: +/- on hand (a stock count); reservation: hold available "
        "units; release: return held units; shipment: units leave from available stock.",
        examples=["reservation"],
    )
    quantity: int = Field(
        ge=-1_000_000_000,
        le=1_000_000_000,
        description="Units; positive, except an adjustment which may be negative. Never 0.",
        examples=[5],
    )
    reference: Text | None = Field(
        None, max_length=100, description="Your order or document number.", examples=["SO-1001"]
    )
    note: Text | None = Field(None, max_length=2000, description="Why.", examples=["cycle count"])

    @model_validator(mode="after")
    def _sign(self) -> MovementCreate:
        if self.quantity == 0:
            raise ValueError("quantity must not be 0")
        if self.type != MovementType.adjustment and self.quantity < 0:
            raise ValueError(
                f"quantity must be positive for a {self.type.value}; only adjustments may be negative"
            )
        return self


class MovementRead(_Read):
    id: int = Field(description="Ledger row ID (increasing).", examples=[1])
    item_id: int = Field(description="The item.", examples=[1])
    type: MovementType = Field(description="What happened.", examples=["reservation"])
    quantity: int = Field(description="Units as requested.", examples=[5])
    on_hand_delta: int = Field(description="Change to quantity on hand.", examples=[0])
    reserved_delta: int = Field(description="Change to reserved units.", examples=[5])
    reference: str | None = Field(
        description="Your order or document number.", examples=["SO-1001"]
    )
    note: str | None = Field(description="Why.", examples=["cycle count"])
    shipment_id: int | None = Field(
        description="The shipment that caused it, if any.", examples=[None]
    )
    actor: str = Field(description="Who recorded it (the caller's subject).", examples=["dev"])
    created_at: dt.datetime = Field(description="When it was recorded (UTC).")


class MovementResult(BaseModel):
    movement: MovementRead
    item: ItemRead


class ReorderAlert(BaseModel):
    item: ItemRead
    shortfall: int = Field(
        description="reorder_level - available + 1: units to bring stock above the level.",
        examples=[5],
    )
    supplier: SupplierRead | None = Field(description="The item's supplier, to order from.")
    expected_days: int | None = Field(description="The supplier's lead time.", examples=[5])


# --- shipments --------------------------------------------------------------------


class ShipmentLineIn(_Model):
    sku: Sku = Field(description="Item to ship.", examples=["WIDGET-001"])
    quantity: int = Field(
        ge=1,
        le=1_000_000,
        description="Units to ship; reserved when the shipment is created.",
        examples=[2],
    )


class ShipmentCreate(_Model):
    reference: Text | None = Field(
        None, max_length=100, description="Your unique order number.", examples=["SO-1001"]
    )
    warehouse_id: RowId | None = Field(None, description="Origin warehouse.", examples=[1])
    destination: Text = Field(
        min_length=1,
        max_length=2000,
        description="Delivery address.",
        examples=["5 Park St, Kolkata"],
    )
    carrier: Text | None = Field(
        None, max_length=100, description="Carrier name.", examples=["BlueDart"]
    )
    tracking_number: Text | None = Field(
        None, max_length=100, description="Carrier's tracking number.", examples=["BD123"]
    )
    lines: list[ShipmentLineIn] = Field(
        min_length=1, max_length=200, description="What to ship (distinct SKUs)."
    )

    @model_validator(mode="after")
    def _distinct(self) -> ShipmentCreate:
        skus = [line.sku for line in self.lines]
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear on one line only")
        return self


class ShipmentLineRead(_Read):
    sku: str = Field(description="Item shipped.", examples=["WIDGET-001"])
    item_id: int = Field(description="Item ID.", examples=[1])
    quantity: int = Field(description="Units.", examples=[2])


class ShipmentRead(_Read):
    id: int = Field(description="Shipment ID.", examples=[1])
    reference: str | None = Field(description="Your unique order number.", examples=["SO-1001"])
    status: ShipmentStatus = Field(
        description="Where it is in its life cycle.", examples=["created"]
    )
    warehouse_id: int | None = Field(description="Origin warehouse.", examples=[1])
    destination: str = Field(description="Delivery address.", examples=["5 Park St, Kolkata"])
    carrier: str | None = Field(description="Carrier name.", examples=["BlueDart"])
    tracking_number: str | None = Field(
        description="Carrier's tracking number.", examples=["BD123"]
    )
    lines: list[ShipmentLineRead] = Field(description="What is shipped.")
    created_at: dt.datetime = Field(description="When it was created (UTC).")
    updated_at: dt.datetime = Field(description="When it last changed (UTC).")


class TransitionCreate(_Model):
    status: ShipmentStatus = Field(description="The next status.", examples=["picked"])
    location: Text | None = Field(
        None, max_length=200, description="Where it happened.", examples=["Bengaluru hub"]
    )
    note: Text | None = Field(
        None, max_length=2000, description="Recorded on the tracking event.", examples=["Packed"]
    )


class TrackingEventCreate(_Model):
    location: Text | None = Field(
        None, max_length=200, description="Where the shipment is.", examples=["Pune hub"]
    )
    description: Text = Field(
        min_length=1, max_length=2000, description="What happened.", examples=["Arrived at hub"]
    )
    occurred_at: UTCTimestamp | None = Field(
        None, description="When (default: now). Must include a timezone (UTC offset)."
    )


class TrackingEventRead(_Read):
    id: int = Field(description="Event ID.", examples=[1])
    status: ShipmentStatus = Field(
        description="The shipment's status at that time.", examples=["in_transit"]
    )
    location: str | None = Field(description="Where.", examples=["Pune hub"])
    description: str = Field(description="What happened.", examples=["Arrived at hub"])
    occurred_at: dt.datetime = Field(description="When (UTC).")
    actor: str = Field(description="Who recorded it.", examples=["dev"])


# --- analytics --------------------------------------------------------------------


class GroupTotals(BaseModel):
    key: str | None = Field(
        description="Category name or warehouse code (null: none set).", examples=["hardware"]
    )
    items: int = Field(description="Distinct items.", examples=[12])
    units: int = Field(description="Units on hand.", examples=[340])
    value: Decimal = Field(description="Units on hand x unit cost.", examples=["850.00"])


class InventoryAnalytics(BaseModel):
    items: int = Field(description="Distinct items.", examples=[12])
    units: int = Field(description="Units on hand.", examples=[340])
    reserved_units: int = Field(description="Units reserved.", examples=[20])
    inventory_value: Decimal = Field(
        description="Sum of on-hand units x unit cost.", examples=["850.00"]
    )
    low_stock_count: int = Field(description="Items at or below their reorder level.", examples=[2])
    by_category: list[GroupTotals]
    by_warehouse: list[GroupTotals]
    shipments_by_status: dict[str, int] = Field(examples=[{"created": 2, "delivered": 5}])
