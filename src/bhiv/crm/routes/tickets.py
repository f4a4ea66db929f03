"""Support tickets: SLA due times by priority, a status workflow, comments."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request, Response, status
from sqlalchemy import case, or_, select

from bhiv.core import (
    Identity,
    Page,
    PageParams,
    current_identity,
    page_params,
    paginate,
    utcnow,
)
from bhiv.core.crud import apply_patch, created, get_or_404, require_reference
from bhiv.core.db import SessionDep
from bhiv.core.errors import conflict
from bhiv.core.fields import StorableText
from bhiv.core.pagination import like_pattern
from bhiv.core.routing import service_router
from bhiv.crm import ticket_workflow
from bhiv.crm.models import (
    UNRESOLVED,
    Customer,
    Ticket,
    TicketComment,
    TicketPriority,
    TicketStatus,
)
from bhiv.crm.schemas import (
    CommentCreate,
    CommentRead,
    Principal,
    TicketCreate,
    TicketRead,
    TicketTransition,
    TicketUpdate,
)
from bhiv.crm.settings import TicketSla

router = service_router(tags=["tickets"])
TicketId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Ticket ID.")]


def sla_policy(request: Request) -> TicketSla:
    policy: TicketSla = request.app.state.settings.ticket_sla
    return policy


SlaDep = Annotated[TicketSla, Depends(sla_policy)]

ticket_page = page_params(
    {
        "id": Ticket.id,
        # Severity order (low < medium < high < urgent), so sort=-priority puts urgent first.
        "priority": case(
            {p.value: rank for rank, p in enumerate(TicketPriority)}, value=Ticket.priority
        ),
        "status": case({s.value: rank for rank, s in enumerate(TicketStatus)}, value=Ticket.status),
        "due_at": Ticket.due_at,
        "created_at": Ticket.created_at,
        "updated_at": Ticket.updated_at,
    },
    default_sort="-id",
)


@router.get("/tickets", response_model=Page[TicketRead], summary="List and search tickets")
def list_tickets(
    session: SessionDep,
    params: Annotated[PageParams, Depends(ticket_page)],
    q: Annotated[
        Annotated[str, StorableText] | None,
        Query(max_length=200, description="Search subject and description."),
    ] = None,
    status_: Annotated[
        list[TicketStatus] | None,
        Query(alias="status", max_length=5, description="Only these statuses (repeatable)."),
    ] = None,
    priority: Annotated[
        list[TicketPriority] | None,
        Query(max_length=4, description="Only these priorities (repeatable)."),
    ] = None,
    assignee: Annotated[
        Principal | None, Query(description="Only tickets assigned to this user.")
    ] = None,
    customer_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Only this customer's tickets.")
    ] = None,
    overdue: Annotated[
        bool | None, Query(description="true: unresolved and past due; false: everything else.")
    ] = None,
) -> Page[TicketRead]:
    stmt = select(Ticket)
    if q:
        pattern = like_pattern(q)
        stmt = stmt.where(
            or_(
                Ticket.subject.ilike(pattern, escape="\\"),
                Ticket.description.ilike(pattern, escape="\\"),
            )
        )
    if status_:
        stmt = stmt.where(Ticket.status.in_(status_))
    if priority:
        stmt = stmt.where(Ticket.priority.in_(priority))
    if assignee is not None:
        stmt = stmt.where(Ticket.assignee == assignee)
    if customer_id is not None:
        stmt = stmt.where(Ticket.customer_id == customer_id)
    if overdue is not None:
        is_overdue = Ticket.status.in_(UNRESOLVED) & (Ticket.due_at < utcnow())
        stmt = stmt.where(is_overdue if overdue else ~is_overdue)
    return paginate(session, stmt, params, TicketRead.model_validate)


@router.post(
    "/tickets",
    response_model=TicketRead,
    status_code=status.HTTP_201_CREATED,
    summary="Open a ticket",
    description="The ticket starts open, due at now + its priority's SLA window (docs/crm.md).",
)
def create_ticket(
    body: TicketCreate, session: SessionDep, sla: SlaDep, response: Response
) -> TicketRead:
    # Locked so that a concurrent delete of the customer waits for this insert
    # (and then refuses, the ticket being unresolved).
    require_reference(session, Customer, body.customer_id, "customer_id", lock=True)
    now = utcnow()
    ticket = Ticket(**body.model_dump(), status=TicketStatus.open, created_at=now, updated_at=now)
    ticket_workflow.start_sla(ticket, sla, now)
    return created(session, response, ticket, TicketRead.model_validate, "/tickets")


@router.get("/tickets/{ticket_id}", response_model=TicketRead, summary="Get a ticket")
def get_ticket(ticket_id: TicketId, session: SessionDep) -> TicketRead:
    return TicketRead.model_validate(get_or_404(session, Ticket, ticket_id))


@router.patch(
    "/tickets/{ticket_id}",
    response_model=TicketRead,
    summary="Change a ticket's details",
    description="A new priority moves the due time to the SLA window's start plus the new "
    "priority's window. The status changes only through POST /tickets/{ticket_id}/transitions.",
)
def update_ticket(
    ticket_id: TicketId, body: TicketUpdate, session: SessionDep, sla: SlaDep
) -> TicketRead:
    ticket = get_or_404(session, Ticket, ticket_id, lock=True)
    changes = apply_patch(ticket, body)
    if "priority" in changes:
        ticket_workflow.refresh_due(ticket, sla)
    result = TicketRead.model_validate(ticket)
    session.commit()
    return result


@router.post(
    "/tickets/{ticket_id}/transitions",
    response_model=TicketRead,
    summary="Move a ticket through its workflow",
    description="open → in_progress ⇄ waiting → resolved → closed; resolved or closed tickets may "
    "be reopened (→ open, with a fresh SLA window). Any other change is refused with 409, "
    "naming the current status and the allowed ones.",
    responses={409: {"description": "Not an allowed next status."}},
)
def transition_ticket(
    ticket_id: TicketId,
    body: TicketTransition,
    session: SessionDep,
    sla: SlaDep,
    identity: Identity = Depends(current_identity),
) -> TicketRead:
    ticket = ticket_workflow.change_status(
        session, ticket_id, body.status, sla, actor=identity.subject, comment=body.comment
    )
    result = TicketRead.model_validate(ticket)
    session.commit()
    return result


comment_page = page_params(
    {"id": TicketComment.id, "created_at": TicketComment.created_at}, default_sort="id"
)


@router.get(
    "/tickets/{ticket_id}/comments", response_model=Page[CommentRead], summary="A ticket's comments"
)
def list_comments(
    ticket_id: TicketId,
    session: SessionDep,
    params: Annotated[PageParams, Depends(comment_page)],
    internal: Annotated[
        bool | None, Query(description="Only internal (true) or public (false) comments.")
    ] = None,
) -> Page[CommentRead]:
    get_or_404(session, Ticket, ticket_id)
    stmt = select(TicketComment).where(TicketComment.ticket_id == ticket_id)
    if internal is not None:
        stmt = stmt.where(TicketComment.internal == internal)
    return paginate(session, stmt, params, CommentRead.model_validate)


@router.post(
    "/tickets/{ticket_id}/comments",
    response_model=CommentRead,
    status_code=status.HTTP_201_CREATED,
    summary="Comment on a ticket",
    description="The author is the caller. A closed ticket takes no comments: reopen it first.",
    responses={409: {"description": "The ticket is closed."}},
)
def add_comment(
    ticket_id: TicketId,
    body: CommentCreate,
    session: SessionDep,
    identity: Identity = Depends(current_identity),
) -> CommentRead:
    ticket = get_or_404(session, Ticket, ticket_id, lock=True)
    if ticket.status == TicketStatus.closed:
        raise conflict(
            f"Ticket {ticket_id} is closed; reopen it to comment.", current=ticket.status.value
        )
    now = utcnow()
    comment = TicketComment(
        ticket_id=ticket_id,
        body=body.body,
        internal=body.internal,
        author=identity.subject,
        created_at=now,
    )
    ticket.updated_at = now
    session.add(comment)
    session.flush()
    result = CommentRead.model_validate(comment)
    session.commit()
    return result
