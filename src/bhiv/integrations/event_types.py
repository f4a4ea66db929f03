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
            "item_id": 1,
            "sku": "WIDGET-001",
            "name": "Steel widget",
            "available": 4,
            "quantity": 9,
            "reserved": 5,
            "reorder_level": 5,
            "supplier_id": 2,
            "movement": {"id": 17, "type": "reservation", "quantity": 5, "reference": "SO-1001"},
        },
    ),
    EventTypeInfo(
        type="shipment.status_changed",
        source="logistics",
        description="A shipment moved through its workflow (created → picked → shipped → in_transit → "
        "delivered, or cancelled). One event per transition.",
        example={
            "shipment_id": 3,
            "reference": "SO-1001",
            "from": "picked",
            "to": "shipped",
            "location": "BLR-1 dock 4",
            "note": None,
            "carrier": "BlueDart",
            "tracking_number": "BD123",
        },
    ),
    EventTypeInfo(
        type="lead.converted",
        source="crm",
        description="A won lead was converted into a customer (published once; converting again is a no-op).",
        example={
            "lead_id": 12,
            "customer_id": 40,
            "name": "Ravi Menon",
            "email": "ravi@example.com",
            "company": None,
        },
    ),
    # Published by the agent-orchestration service's shipped workflows.
    EventTypeInfo(
        type="order.placed",
        source="agent-orchestration",
        description="The customer-order-processing workflow reserved stock for an order (its shipment exists).",
        example={
            "reference": "SO-1001",
            "customer_id": 40,
            "customer_email": "ravi@example.com",
            "shipment_id": 3,
            "lines": [{"sku": "WIDGET-001", "quantity": 2}],
        },
    ),
    EventTypeInfo(
        type="inventory.reorder_requested",
        source="agent-orchestration",
        description="The inventory-reorder workflow chose a supplier (best rating, then shortest lead time) for "
        "the items at or below their reorder level.",
        example={
            "supplier": {"id": 2, "name": "Acme Components", "rating": "4.5", "lead_time_days": 5},
            "items": [{"sku": "WIDGET-001", "available": 4, "shortfall": 2}],
        },
    ),
    EventTypeInfo(
        type="agent.task_completed",
        source="agent-orchestration",
        description="The ai-agent-task workflow's LLM agent answered a prompt.",
        example={"prompt": "Summarise today's low-stock items", "answer": "Two items are low: ..."},
    ),
    EventTypeInfo(
        type="integration.sync_completed",
        source="agent-orchestration",
        description="The external-integration-sync workflow ran a sync job to completion.",
        example={
            "sync_job_id": 1,
            "sync_run": {"id": 9, "status": "succeeded", "created": 3, "updated": 1},
        },
    ),
    EventTypeInfo(
        type="analytics.snapshot",
        source="agent-orchestration",
        description="The multi-service-data-flow workflow combined Logistics and CRM analytics into one snapshot.",
        example={"inventory_value": "850.00", "low_stock_count": 2, "customers": 40},
    ),
    EventTypeInfo(
        type="webhook.received",
        source="integrations",
        description="An inbound webhook from a named source passed its signature check and was stored (once per "
        "source and webhook-id). Agent-orchestration's webhook triggers start workflows from it.",
        example={
            "source": "acme-payments",
            "message_id": "msg_2b1c",
            "event_type": "payment.succeeded",
            "payload": {"type": "payment.succeeded", "data": {"amount": 1200}},
        },
    ),
)
