"""The domain events BHIV services publish: what each means and an example.

Ingest accepts any well-formed type (a service may add events before this list
knows them); subscribers use this list to choose what to receive.
"""

from __future__ import annotations

from bhiv.integrations.schemas import EventTypeInfo

EVENT_TYPES: tuple[EventTypeInfo, ...] = (
    EventTypeInfo(
        type="inventory.low_stock",
        source="logistics",
        description="A stock movement took an item's available stock (on hand minus reserved) from above its "
        "reorder level to at or below it. Published once per crossing, not on every movement while low.",
        example={
            "item_id": 1, "sku": "WIDGET-001", "name": "Steel widget", "available": 4, "quantity": 9,
            "reserved": 5, "reorder_level": 5, "supplier_id": 2,
            "movement": {"id": 17, "type": "reservation", "quantity": 5, "reference": "SO-1001"},
        },
    ),
    EventTypeInfo(
        type="shipment.status_changed",
        source="logistics",
        description="A shipment moved through its workflow (created → picked → shipped → in_transit → "
        "delivered, or cancelled). One event per transition.",
        example={
            "shipment_id": 3, "reference": "SO-1001", "from": "picked", "to": "shipped",
            "location": "BLR-1 dock 4", "note": None, "carrier": "BlueDart", "tracking_number": "BD123",
        },
    ),
    EventTypeInfo(
        type="lead.converted",
        source="crm",
        description="A won lead was converted into a customer (published once; converting again is a no-op).",
        example={"lead_id": 12, "customer_id": 40, "name": "Ravi Menon", "email": "ravi@example.com", "company": None},
    ),
)
