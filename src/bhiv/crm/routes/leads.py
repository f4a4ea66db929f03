"""Leads: the sales pipeline, scored on every change, and conversion into customers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import case, delete, or_, select

from bhiv.core import Page, PageParams, page_params, paginate
from bhiv.core.crud import apply_patch, created, get_or_404
from bhiv.core.db import SessionDep, rows_changed
from bhiv.core.errors import conflict
from bhiv.core.fields import StorableText
from bhiv.core.pagination import like_pattern
from bhiv.core.routing import service_router
from bhiv.crm import lead_pipeline
from bhiv.crm.models import Lead, LeadSource, LeadStage
from bhiv.crm.schemas import (
    Conversion,
    CustomerRead,
    LeadCreate,
    LeadRead,
    LeadTransition,
    LeadUpdate,
    Principal,
)

router = service_router(tags=["leads"])
LeadId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Lead ID.")]
AmountQuery = Annotated[Decimal | None, Query(ge=0, max_digits=12, decimal_places=2)]

lead_page = page_params(
    {
        "id": Lead.id,
        "name": Lead.name,
        "company": Lead.company,
        # Pipeline order rather than alphabetical.
        "stage": case({s.value: rank for rank, s in enumerate(LeadStage)}, value=Lead.stage),
        "score": Lead.score,
        "expected_value": Lead.expected_value,
        "created_at": Lead.created_at,
        "updated_at": Lead.updated_at,
    },
    default_sort="-score",
)


@router.get("/leads", response_model=Page[LeadRead], summary="List and search leads")
def list_leads(
    session: SessionDep,
    params: Annotated[PageParams, Depends(lead_page)],
    q: Annotated[
        Annotated[str, StorableText] | None,
        Query(max_length=200, description="Search name, company and email."),
    ] = None,
    stage: Annotated[
        list[LeadStage] | None, Query(max_length=6, description="Only these stages (repeatable).")
    ] = None,
    source: Annotated[LeadSource | None, Query(description="Only this source.")] = None,
    owner: Annotated[Principal | None, Query(description="Only leads of this owner.")] = None,
    converted: Annotated[
        bool | None, Query(description="Only converted (true) or unconverted (false) leads.")
    ] = None,
    score_min: Annotated[int | None, Query(ge=0, le=100)] = None,
    score_max: Annotated[int | None, Query(ge=0, le=100)] = None,
    expected_value_min: AmountQuery = None,
    expected_value_max: AmountQuery = None,
) -> Page[LeadRead]:
    stmt = select(Lead)
    if q:
        pattern = like_pattern(q)
        stmt = stmt.where(
            or_(*(col.ilike(pattern, escape="\\") for col in (Lead.name, Lead.company, Lead.email)))
        )
    if stage:
        stmt = stmt.where(Lead.stage.in_(stage))
    if source is not None:
        stmt = stmt.where(Lead.source == source)
    if owner is not None:
        stmt = stmt.where(Lead.owner == owner)
    if converted is not None:
        stmt = stmt.where(
            Lead.converted_at.is_not(None) if converted else Lead.converted_at.is_(None)
        )
    if score_min is not None:
        stmt = stmt.where(Lead.score >= score_min)
    if score_max is not None:
        stmt = stmt.where(Lead.score <= score_max)
    if expected_value_min is not None:
        stmt = stmt.where(Lead.expected_value >= expected_value_min)
    if expected_value_max is not None:
        stmt = stmt.where(Lead.expected_value <= expected_value_max)
    return paginate(session, stmt, params, LeadRead.model_validate)


@router.post(
    "/leads",
    response_model=LeadRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a lead",
    description="A lead starts in stage new; its score and the score's explanation come back in "
    "the response.",
)
def create_lead(body: LeadCreate, session: SessionDep, response: Response) -> LeadRead:
    lead = Lead(**body.model_dump(), stage=LeadStage.new)
    lead_pipeline.rescore(lead)
    return created(session, response, lead, LeadRead.model_validate, "/leads")


@router.get("/leads/{lead_id}", response_model=LeadRead, summary="Get a lead and its score")
def get_lead(lead_id: LeadId, session: SessionDep) -> LeadRead:
    return LeadRead.model_validate(get_or_404(session, Lead, lead_id))


@router.patch(
    "/leads/{lead_id}",
    response_model=LeadRead,
    summary="Change a lead's details",
    description="The score is recomputed. The stage changes only through POST "
    "/leads/{lead_id}/transitions.",
)
def update_lead(lead_id: LeadId, body: LeadUpdate, session: SessionDep) -> LeadRead:
    lead = get_or_404(session, Lead, lead_id, lock=True)
    apply_patch(lead, body)
    lead_pipeline.rescore(lead)
    result = LeadRead.model_validate(lead)
    session.commit()
    return result


@router.delete(
    "/leads/{lead_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a lead that was not converted",
    responses={
        409: {
            "description": "The lead was converted; it is kept as the record of where the customer "
            "came from."
        }
    },
)
def delete_lead(lead_id: LeadId, session: SessionDep) -> Response:
    # Guarded, so a conversion committed after our read still keeps its lead.
    deleted = session.execute(delete(Lead).where(Lead.id == lead_id, Lead.converted_at.is_(None)))
    if rows_changed(deleted) != 1:
        lead = get_or_404(session, Lead, lead_id)
        raise conflict(
            f"Lead {lead_id} was converted into a customer and is kept as that customer's origin.",
            customer_id=lead.customer_id,
        )
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/leads/{lead_id}/transitions",
    response_model=LeadRead,
    summary="Move a lead to its next stage",
    description="new → contacted → qualified → proposal → won, or lost from any open stage. "
    "Any other change is refused with 409, naming the current stage and the allowed ones.",
    responses={409: {"description": "Not an allowed next stage."}},
)
def transition_lead(lead_id: LeadId, body: LeadTransition, session: SessionDep) -> LeadRead:
    lead = lead_pipeline.change_stage(session, lead_id, body.stage, body.lost_reason)
    result = LeadRead.model_validate(lead)
    session.commit()
    return result


@router.post(
    "/leads/{lead_id}/convert",
    response_model=Conversion,
    status_code=status.HTTP_201_CREATED,
    summary="Convert a won lead into a customer",
    description="Creates the customer from the lead's name, company, email, phone and owner, in "
    "one transaction with marking the lead converted. Idempotent: converting again returns "
    "the same customer with 200.",
    responses={
        200: {"description": "Already converted: the customer it became.", "model": Conversion},
        409: {
            "description": "The lead is not won, has no email, or a customer has its email already."
        },
    },
)
def convert_lead(lead_id: LeadId, session: SessionDep, response: Response) -> Conversion:
    converted = lead_pipeline.convert(session, lead_id)
    result = Conversion(
        lead=LeadRead.model_validate(converted.lead),
        customer=CustomerRead.model_validate(converted.customer),
        created=converted.created,
    )
    session.commit()
    response.status_code = status.HTTP_201_CREATED if converted.created else status.HTTP_200_OK
    response.headers["Location"] = f"/customers/{converted.customer.id}"
    return result
