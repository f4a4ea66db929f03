"""Domain events: ingest (from the services' outbox relays), listing, the catalogue."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bhiv.core import Page, PageParams, page_params, paginate, tracing, utcnow
from bhiv.core.auth import Identity, current_identity
from bhiv.core.db import SessionDep
from bhiv.core.errors import Problem, not_found
from bhiv.core.fields import UTCTimestamp
from bhiv.core.routing import service_router
from bhiv.core.service_auth import service_of
from bhiv.integrations.delivery import fan_out
from bhiv.integrations.event_types import EVENT_TYPES
from bhiv.integrations.models import Event
from bhiv.integrations.schemas import EventAccepted, EventIn, EventRead, EventTypeInfo

router = service_router(tags=["events"])
pages = page_params({"id": Event.id, "occurred_at": Event.occurred_at}, default_sort="-id")


def read(event: Event) -> EventRead:
    return EventRead(
        id=event.event_id,
        type=event.type,
        source=event.source,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        data=event.data,
    )


def check_publisher(identity: Identity, source: str) -> None:
    """403 unless the caller may publish events as ``source``.

    Subscribers receive these events signed by us, so the source is a claim we vouch
    for: a service publishes only as itself, and an admin (a backfill, a replay from
    another system, a test) as any source. Anyone else, editors included, cannot.
    """
    speaks_for = service_of(identity)
    if "admin" in identity.permissions or speaks_for == source:
        return
    who = f"the {speaks_for} service" if speaks_for else f"'{identity.subject}'"
    message = (
        f"only the {source} service itself (or an admin) may publish as '{source}'; you are {who}"
    )
    raise Problem(
        403,
        f"source: {message}.",
        kind="forbidden",
        errors=[{"location": "body", "field": "source", "message": message, "type": "forbidden"}],
    )


def _known(session: Session, event_id: str) -> Event | None:
    return session.scalar(select(Event).where(Event.event_id == event_id))


@router.post(
    "/events",
    response_model=EventAccepted,
    status_code=status.HTTP_201_CREATED,
    summary="Ingest a domain event and fan it out to subscribers",
    description="Idempotent on `id`: an event received before is answered 200 with `duplicate: true` and "
    "queues nothing, so an outbox relay may safely send it again. The `source` is bound to the caller: a "
    "service (subject `service:<name>`) publishes only as itself; an admin may publish as any source.",
    responses={
        200: {"model": EventAccepted, "description": "Received before; nothing was done."},
        403: {"description": "The caller may not publish as this source."},
    },
)
def ingest(
    body: EventIn,
    session: SessionDep,
    response: Response,
    identity: Annotated[Identity, Depends(current_identity)],
) -> EventAccepted:
    check_publisher(identity, body.source)
    if _known(session, body.id) is not None:
        response.status_code = status.HTTP_200_OK
        return EventAccepted(id=body.id, duplicate=True, deliveries=0)
    event = Event(
        event_id=body.id,
        type=body.type,
        source=body.source,
        occurred_at=body.occurred_at,
        data=body.data,
        received_at=utcnow(),
        traceparent=body.traceparent or tracing.current_traceparent(),
    )
    try:
        session.add(event)
        session.flush()
    except IntegrityError:
        # Two relays (or a relay's retry) raced on one ID; the other stored it.
        session.rollback()
        response.status_code = status.HTTP_200_OK
        return EventAccepted(id=body.id, duplicate=True, deliveries=0)
    queued = fan_out(session, event)
    session.commit()
    return EventAccepted(id=body.id, duplicate=False, deliveries=queued)


@router.get("/events", response_model=Page[EventRead], summary="List received events")
def list_events(
    session: SessionDep,
    params: Annotated[PageParams, Depends(pages)],
    type: Annotated[
        str | None, Query(max_length=100, pattern=r"^[a-z0-9_.]+$", description="Only this type.")
    ] = None,
    source: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[a-z0-9_-]+$", description="Only from this service."),
    ] = None,
    occurred_at_min: Annotated[
        UTCTimestamp | None, Query(description="Occurred at or after.")
    ] = None,
    occurred_at_max: Annotated[
        UTCTimestamp | None, Query(description="Occurred at or before.")
    ] = None,
) -> Page[EventRead]:
    stmt = select(Event)
    if type is not None:
        stmt = stmt.where(Event.type == type)
    if source is not None:
        stmt = stmt.where(Event.source == source)
    if occurred_at_min is not None:
        stmt = stmt.where(Event.occurred_at >= occurred_at_min)
    if occurred_at_max is not None:
        stmt = stmt.where(Event.occurred_at <= occurred_at_max)
    return paginate(session, stmt, params, read)


@router.get("/events/{event_id}", response_model=EventRead, summary="Get an event by its ID")
def get_event(
    event_id: Annotated[
        str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The event's ID.")
    ],
    session: SessionDep,
) -> EventRead:
    event = _known(session, event_id)
    if event is None:
        raise not_found("Event", event_id)
    return read(event)


@router.get("/event-types", response_model=list[EventTypeInfo], summary="The event catalogue")
def event_types() -> list[EventTypeInfo]:
    return list(EVENT_TYPES)
