"""Shipments: reserve stock on creation, consume it when shipped, release it
when cancelled; a state machine guards the order of events."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import select, update

from bhiv.core import (
    Identity,
    Page,
    PageParams,
    current_identity,
    page_params,
    paginate,
    utcnow,
)
from bhiv.core.crud import created, get_or_404, require_reference, unique_as_conflict
from bhiv.core.db import SessionDep, rows_changed
from bhiv.core.errors import Problem, field_problem
from bhiv.core.fields import StorableText
from bhiv.core.routing import service_router
from bhiv.core.status_machine import StatusMachine
from bhiv.logistics import stock
from bhiv.logistics.models import (
    OUTBOX,
    Item,
    MovementType,
    Shipment,
    ShipmentLine,
    ShipmentStatus,
    TrackingEvent,
    Warehouse,
)
from bhiv.logistics.schemas import (
    ShipmentCreate,
    ShipmentRead,
    TrackingEventCreate,
    TrackingEventRead,
    TransitionCreate,
)

router = service_router(tags=["shipments"])
ShipmentId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Shipment ID.")]

S = ShipmentStatus
SHIPMENT_WORKFLOW: StatusMachine[ShipmentStatus] = StatusMachine(
    "Shipment",
    {
        S.created: {S.picked, S.cancelled},
        S.picked: {S.shipped, S.cancelled},
        S.shipped: {S.in_transit},
        S.in_transit: {S.delivered},
        S.delivered: set(),
        S.cancelled: set(),
    },
)
TRANSITIONS = SHIPMENT_WORKFLOW.transitions

shipment_page = page_params(
    {
        "id": Shipment.id,
        "status": Shipment.status,
        "created_at": Shipment.created_at,
        "updated_at": Shipment.updated_at,
    },
    default_sort="-id",
)


@router.get("/shipments", response_model=Page[ShipmentRead], summary="List shipments")
def list_shipments(
    session: SessionDep,
    params: Annotated[PageParams, Depends(shipment_page)],
    status_: Annotated[
        ShipmentStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
    warehouse_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    reference: Annotated[Annotated[str, StorableText] | None, Query(max_length=100)] = None,
) -> Page[ShipmentRead]:
    stmt = select(Shipment)
    if status_ is not None:
        stmt = stmt.where(Shipment.status == status_)
    if warehouse_id is not None:
        stmt = stmt.where(Shipment.warehouse_id == warehouse_id)
    if reference is not None:
        stmt = stmt.where(Shipment.reference == reference)
    return paginate(session, stmt, params, ShipmentRead.model_validate)


@router.post(
    "/shipments",
    response_model=ShipmentRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a shipment and reserve its stock",
    description="All lines are reserved in one transaction: if any SKU lacks stock, nothing is reserved (409).",
    responses={409: {"description": "Not enough stock, or the reference exists."}},
)
def create_shipment(
    body: ShipmentCreate,
    session: SessionDep,
    response: Response,
    identity: Identity = Depends(current_identity),
) -> ShipmentRead:
    require_reference(session, Warehouse, body.warehouse_id, "warehouse_id")
    skus = [line.sku for line in body.lines]
    items = {i.sku: i for i in session.scalars(select(Item).where(Item.sku.in_(skus)))}
    for index, line in enumerate(body.lines):
        if line.sku not in items:
            raise field_problem(f"lines.{index}.sku", f"no item has SKU '{line.sku}'")

    shipment = Shipment(**body.model_dump(exclude={"lines"}))
    with unique_as_conflict(session, "shipments", {"reference": body.reference}, "shipment"):
        session.add(shipment)
        session.flush()
        # Lock rows in a fixed order (item ID) so concurrent shipments cannot deadlock.
        for line in sorted(body.lines, key=lambda ln: items[ln.sku].id):
            item = items[line.sku]
            session.add(
                ShipmentLine(
                    shipment_id=shipment.id, item_id=item.id, sku=item.sku, quantity=line.quantity
                )
            )
            stock.record(
                session,
                item.id,
                MovementType.reservation,
                line.quantity,
                actor=identity.subject,
                reference=body.reference,
                shipment_id=shipment.id,
            )
        session.add(
            TrackingEvent(
                shipment_id=shipment.id,
                status=S.created,
                description="Shipment created",
                actor=identity.subject,
            )
        )
        session.flush()
        session.refresh(shipment)  # its lines and tracking events, as just written
        return created(session, response, shipment, ShipmentRead.model_validate, "/shipments")


@router.get("/shipments/{shipment_id}", response_model=ShipmentRead, summary="Get a shipment")
def get_shipment(shipment_id: ShipmentId, session: SessionDep) -> ShipmentRead:
    return ShipmentRead.model_validate(get_or_404(session, Shipment, shipment_id))


@router.post(
    "/shipments/{shipment_id}/transitions",
    response_model=ShipmentRead,
    summary="Move a shipment to its next status",
    description="created -> picked -> shipped -> in_transit -> delivered; created or picked -> cancelled. "
    "Shipping consumes the reserved stock; cancelling releases it. Any other move is a 409.",
    responses={409: {"description": "The transition is not allowed from the current status."}},
)
def transition(
    shipment_id: ShipmentId,
    body: TransitionCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> ShipmentRead:
    shipment = get_or_404(session, Shipment, shipment_id)
    SHIPMENT_WORKFLOW.check(shipment_id, shipment.status, body.status)
    # Claim the transition first: the guarded UPDATE takes the row lock, so a
    # concurrent transition of the same shipment waits and then matches nothing.
    updated = session.execute(
        update(Shipment)
        .where(Shipment.id == shipment.id, Shipment.status == shipment.status)
        .values(status=body.status, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if rows_changed(updated) != 1:
        session.rollback()
        raise Problem(
            409, f"Shipment {shipment_id} changed concurrently; retry.", kind="concurrent-update"
        )
    for line in sorted(shipment.lines, key=lambda ln: ln.item_id):
        if body.status == S.shipped:
            stock.record(
                session,
                line.item_id,
                MovementType.shipment,
                line.quantity,
                actor=identity.subject,
                on_hand_delta=-line.quantity,
                reserved_delta=-line.quantity,
                reference=shipment.reference,
                shipment_id=shipment.id,
            )
        elif body.status == S.cancelled:
            stock.record(
                session,
                line.item_id,
                MovementType.release,
                line.quantity,
                actor=identity.subject,
                reference=shipment.reference,
                shipment_id=shipment.id,
                note="shipment cancelled",
            )
    session.add(
        TrackingEvent(
            shipment_id=shipment.id,
            status=body.status,
            location=body.location,
            description=body.note or f"Status changed to {body.status.value}",
            actor=identity.subject,
        )
    )
    OUTBOX.publish(
        session,
        "shipment.status_changed",
        {
            "shipment_id": shipment.id,
            "reference": shipment.reference,
            "from": shipment.status.value,
            "to": body.status.value,
            "location": body.location,
            "note": body.note,
            "carrier": shipment.carrier,
            "tracking_number": shipment.tracking_number,
        },
    )
    session.flush()
    session.refresh(shipment)
    result = ShipmentRead.model_validate(shipment)
    session.commit()
    return result


@router.get(
    "/shipments/{shipment_id}/events",
    response_model=list[TrackingEventRead],
    summary="A shipment's tracking history",
)
def list_events(shipment_id: ShipmentId, session: SessionDep) -> list[TrackingEventRead]:
    get_or_404(session, Shipment, shipment_id)
    events = session.scalars(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment_id)
        .order_by(TrackingEvent.id)
    )
    return [TrackingEventRead.model_validate(e) for e in events]


@router.post(
    "/shipments/{shipment_id}/events",
    response_model=TrackingEventRead,
    status_code=status.HTTP_201_CREATED,
    summary="Add a tracking event",
    description="Records where a shipment is without changing its status (use transitions for that).",
    responses={409: {"description": "The shipment is cancelled or delivered."}},
)
def add_event(
    shipment_id: ShipmentId,
    body: TrackingEventCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> TrackingEventRead:
    shipment = get_or_404(session, Shipment, shipment_id)
    if shipment.status in (S.cancelled, S.delivered):
        raise Problem(
            409,
            f"Shipment {shipment_id} is {shipment.status.value}; it takes no more events.",
            kind="conflict",
        )
    event = TrackingEvent(
        shipment_id=shipment_id,
        status=shipment.status,
        location=body.location,
        description=body.description,
        # UTCTimestamp: already aware, in UTC and in range.
        occurred_at=body.occurred_at or utcnow(),
        actor=identity.subject,
    )
    session.add(event)
    session.commit()
    return TrackingEventRead.model_validate(event)
