"""Customers: a plain resource on the shared resource router, plus tag filters
and the delete policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from bhiv.core.crud import get_or_404
from bhiv.core.errors import conflict
from bhiv.core.resources import resource_router
from bhiv.crm.models import UNRESOLVED, Customer, CustomerStatus, CustomerTag, Ticket
from bhiv.crm.schemas import CustomerCreate, CustomerRead, CustomerUpdate, Name, Principal, Tag


def customer_filters(
    status: Annotated[CustomerStatus | None, Query(description="Only this status.")] = None,
    owner: Annotated[Principal | None, Query(description="Only customers of this owner.")] = None,
    company: Annotated[Name | None, Query(description="Exact company name.")] = None,
    tag: Annotated[
        list[Tag] | None,
        Query(
            max_length=20, description="Only customers with every one of these tags (repeatable)."
        ),
    ] = None,
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if status is not None:
        clauses.append(Customer.status == status)
    if owner is not None:
        clauses.append(Customer.owner == owner)
    if company is not None:
        clauses.append(Customer.company == company)
    for one in dict.fromkeys(tag or ()):
        clauses.append(
            Customer.id.in_(select(CustomerTag.customer_id).where(CustomerTag.tag == one))
        )
    return clauses


def refuse_while_tickets_unresolved(session: Session, customer: Customer) -> None:
    """The delete policy (docs/crm.md): no delete while a ticket is unresolved.

    The customer row is locked first, so a ticket created concurrently either
    commits before this check sees it, or waits and then finds no customer.
    """
    get_or_404(session, Customer, customer.id, lock=True)
    unresolved = select(Ticket.id).where(
        Ticket.customer_id == customer.id, Ticket.status.in_(UNRESOLVED)
    )
    count = session.scalar(select(func.count()).select_from(unresolved.subquery())) or 0
    if count:
        first = list(session.scalars(unresolved.order_by(Ticket.id).limit(10)))
        raise conflict(
            f"Customer {customer.id} has {count} unresolved ticket(s); resolve or close them "
            "before deleting the customer, or set its status to inactive or churned instead.",
            unresolved_ticket_ids=first,
        )


router = resource_router(
    path="/customers",
    what="customer",
    model=Customer,
    create_schema=CustomerCreate,
    update_schema=CustomerUpdate,
    read_schema=CustomerRead,
    unique=("email",),
    search=(Customer.name, Customer.company, Customer.email, Customer.phone),
    sortable={
        "id": Customer.id,
        "name": Customer.name,
        "company": Customer.company,
        "email": Customer.email,
        "status": Customer.status,
        "created_at": Customer.created_at,
        "updated_at": Customer.updated_at,
    },
    filters=customer_filters,
    before_delete=refuse_while_tickets_unresolved,
    tag="customers",
)
