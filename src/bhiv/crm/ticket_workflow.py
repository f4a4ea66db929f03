"""Support tickets: the status workflow and the SLA clock.

A ticket's due time is the start of its SLA window plus its priority's window
(``CrmSettings.ticket_sla``). The window starts when the ticket is created and
starts again when it is reopened; a priority change moves the due time within
the current window. Nothing here commits.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from bhiv.core import utcnow
from bhiv.core.crud import get_or_404
from bhiv.core.status_machine import StatusMachine
from bhiv.crm.models import Ticket, TicketComment, TicketStatus
from bhiv.crm.settings import TicketSla

T = TicketStatus
TICKET_WORKFLOW: StatusMachine[TicketStatus] = StatusMachine(
    "Ticket",
    {
        T.open: {T.in_progress, T.waiting, T.resolved},
        T.in_progress: {T.waiting, T.resolved},
        T.waiting: {T.in_progress, T.resolved},
        T.resolved: {T.closed, T.open},
        T.closed: {T.open},
    },
)


def start_sla(ticket: Ticket, sla: TicketSla, now: dt.datetime) -> None:
    ticket.sla_started_at = now
    refresh_due(ticket, sla)


def refresh_due(ticket: Ticket, sla: TicketSla) -> None:
    """Due time from the current window's start and priority (after either changes)."""
    ticket.due_at = ticket.sla_started_at + sla.window(ticket.priority)


def change_status(
    session: Session,
    ticket_id: int,
    status: TicketStatus,
    sla: TicketSla,
    *,
    actor: str,
    comment: str | None,
) -> Ticket:
    ticket = get_or_404(session, Ticket, ticket_id, lock=True)
    TICKET_WORKFLOW.check(ticket_id, ticket.status, status)
    now = utcnow()
    if status == T.resolved:
        ticket.resolved_at = now
        ticket.resolution_seconds = int((now - ticket.created_at).total_seconds())
    elif status == T.closed:
        ticket.closed_at = now
    elif status == T.open:
        # Reopened: the earlier resolution no longer counts, and the team gets a
        # fresh SLA window rather than a ticket that is overdue on arrival.
        ticket.resolved_at = ticket.closed_at = ticket.resolution_seconds = None
        start_sla(ticket, sla, now)
    ticket.status = status
    ticket.updated_at = now
    if comment:
        session.add(
            TicketComment(
                ticket_id=ticket.id, body=comment, internal=False, author=actor, created_at=now
            )
        )
    return ticket
