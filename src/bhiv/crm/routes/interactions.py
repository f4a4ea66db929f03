"""Interactions: each customer's timeline, and one list across all customers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import ColumnElement, select

from bhiv.core import (
    Identity,
    Page,
    PageParams,
    current_identity,
    page_params,
    paginate,
    utcnow,
)
from bhiv.core.crud import created, get_or_404, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import field_problem
from bhiv.core.fields import UTCTimestamp
from bhiv.core.routing import service_router
from bhiv.crm.models import Customer, Interaction, InteractionKind
from bhiv.crm.schemas import InteractionCreate, InteractionRead, Principal

router = service_router(tags=["interactions"])
CustomerId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Customer ID.")]
InteractionId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Interaction ID.")]

interaction_page = page_params(
    {"id": Interaction.id, "occurred_at": Interaction.occurred_at, "kind": Interaction.kind},
    default_sort="-occurred_at",
)


def interaction_filters(
    kind: Annotated[InteractionKind | None, Query(description="Only this kind.")] = None,
    reference: Annotated[
        str | None,
        Query(min_length=1, max_length=100, description="Only the one with this reference."),
    ] = None,
    occurred_from: Annotated[
        UTCTimestamp | None,
        Query(description="Only those at or after this time (with a UTC offset)."),
    ] = None,
    occurred_to: Annotated[
        UTCTimestamp | None, Query(description="Only those before this time (with a UTC offset).")
    ] = None,
) -> list[ColumnElement[bool]]:
    if occurred_from is not None and occurred_to is not None and occurred_to <= occurred_from:
        raise field_problem("occurred_to", "must be later than occurred_from", location="query")
    clauses: list[ColumnElement[bool]] = []
    if kind is not None:
        clauses.append(Interaction.kind == kind)
    if reference is not None:
        clauses.append(Interaction.reference == reference)
    if occurred_from is not None:
        clauses.append(Interaction.occurred_at >= occurred_from)
    if occurred_to is not None:
        clauses.append(Interaction.occurred_at < occurred_to)
    return clauses


Filters = Annotated[list[ColumnElement[bool]], Depends(interaction_filters)]
Pages = Annotated[PageParams, Depends(interaction_page)]


@router.get(
    "/customers/{customer_id}/interactions",
    response_model=Page[InteractionRead],
    summary="A customer's timeline",
    description="Calls, emails, meetings and notes with one customer, newest first by default.",
)
def customer_timeline(
    customer_id: CustomerId, session: SessionDep, params: Pages, filters: Filters
) -> Page[InteractionRead]:
    get_or_404(session, Customer, customer_id)
    stmt = select(Interaction).where(Interaction.customer_id == customer_id, *filters)
    return paginate(session, stmt, params, InteractionRead.model_validate)


@router.post(
    "/customers/{customer_id}/interactions",
    response_model=InteractionRead,
    status_code=status.HTTP_201_CREATED,
    summary="Record an interaction",
    description="Appends to the customer's timeline; the author is the caller. A `reference` "
    "already recorded for this customer is a 409 (`errors[].type` `unique`), nothing added.",
)
def record_interaction(
    customer_id: CustomerId,
    body: InteractionCreate,
    session: SessionDep,
    response: Response,
    identity: Identity = Depends(current_identity),
) -> InteractionRead:
    # Locked so that a concurrent delete of the customer cannot remove it between
    # this check and the insert.
    get_or_404(session, Customer, customer_id, lock=True)
    interaction = Interaction(
        customer_id=customer_id,
        kind=body.kind,
        subject=body.subject,
        notes=body.notes,
        reference=body.reference,
        author=identity.subject,
        occurred_at=body.occurred_at or utcnow(),
    )
    with unique_as_conflict(
        session, "interactions", {"reference": body.reference}, "customer interaction"
    ):
        return created(
            session, response, interaction, InteractionRead.model_validate, "/interactions"
        )


@router.get(
    "/interactions",
    response_model=Page[InteractionRead],
    summary="Interactions across customers",
    description="Every customer's interactions in a time range, e.g. a week's activity; newest "
    "first by default.",
)
def list_interactions(
    session: SessionDep,
    params: Pages,
    filters: Filters,
    customer_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Only this customer.")
    ] = None,
    author: Annotated[
        Principal | None, Query(description="Only those recorded by this user.")
    ] = None,
) -> Page[InteractionRead]:
    stmt = select(Interaction).where(*filters)
    if customer_id is not None:
        stmt = stmt.where(Interaction.customer_id == customer_id)
    if author is not None:
        stmt = stmt.where(Interaction.author == author)
    return paginate(session, stmt, params, InteractionRead.model_validate)


@router.get(
    "/interactions/{interaction_id}", response_model=InteractionRead, summary="Get an interaction"
)
def get_interaction(interaction_id: InteractionId, session: SessionDep) -> InteractionRead:
    return InteractionRead.model_validate(get_or_404(session, Interaction, interaction_id))
