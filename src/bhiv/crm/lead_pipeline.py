"""The sales pipeline: a lead's stage changes, its score kept current, and the
conversion of a won lead into a customer.

Nothing here commits; the route commits, so the ``lead.converted`` outbox row
joins the conversion's transaction: the event exists exactly when the customer does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bhiv.core import Problem, conflict, utcnow
from bhiv.core.crud import get_or_404, unique_as_conflict
from bhiv.core.db import rows_changed
from bhiv.core.status_machine import StatusMachine
from bhiv.crm.lead_scoring import score_lead
from bhiv.crm.models import OUTBOX, Customer, CustomerStatus, Lead, LeadStage

L = LeadStage
LEAD_WORKFLOW: StatusMachine[LeadStage] = StatusMachine(
    "Lead",
    {
        L.new: {L.contacted, L.lost},
        L.contacted: {L.qualified, L.lost},
        L.qualified: {L.proposal, L.lost},
        L.proposal: {L.won, L.lost},
        L.won: set(),
        L.lost: set(),
    },
)


def rescore(lead: Lead) -> None:
    """Recompute the stored score; call after every change to a lead."""
    lead.score = score_lead(lead).total


def change_stage(session: Session, lead_id: int, stage: LeadStage, lost_reason: str | None) -> Lead:
    # The row lock makes check-then-write safe and keeps the score consistent
    # with a concurrent PATCH: whichever runs second sees the other's result.
    lead = get_or_404(session, Lead, lead_id, lock=True)
    LEAD_WORKFLOW.check(lead_id, lead.stage, stage)
    now = utcnow()
    lead.stage = stage
    lead.lost_reason = lost_reason if stage == LeadStage.lost else None
    lead.stage_changed_at = now
    lead.updated_at = now
    rescore(lead)
    return lead


@dataclass(frozen=True)
class ConversionResult:
    lead: Lead
    customer: Customer
    created: bool


def convert(session: Session, lead_id: int) -> ConversionResult:
    """Turn a won lead into a customer, once.

    The guarded UPDATE claims the conversion before anything else: on PostgreSQL
    a concurrent convert of the same lead blocks on the row lock, then matches
    nothing and returns the customer this one created; on SQLite writers are
    serialised. Any refusal below leaves the claim uncommitted, so it is rolled
    back with the request.
    """
    now = utcnow()
    claimed = session.execute(
        update(Lead)
        .where(Lead.id == lead_id, Lead.stage == LeadStage.won, Lead.converted_at.is_(None))
        .values(converted_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    lead = get_or_404(session, Lead, lead_id)
    if rows_changed(claimed) != 1:
        return _already_converted(session, lead)

    if not lead.email:
        raise conflict(
            f"Lead {lead_id} has no email and a customer needs one; set it with PATCH "
            f"/leads/{lead_id} first.",
            missing=["email"],
        )
    existing = session.scalar(select(Customer.id).where(Customer.email == lead.email))
    if existing is not None:
        raise Problem(
            409,
            f"Customer {existing} already has the email {lead.email}; a lead converts into a new "
            "customer only.",
            kind="conflict",
            errors=[
                {
                    "location": "lead",
                    "field": "email",
                    "message": "already exists",
                    "type": "unique",
                }
            ],
            extra={"customer_id": existing},
        )
    customer = Customer(
        name=lead.name,
        company=lead.company,
        email=lead.email,
        phone=lead.phone,
        owner=lead.owner,
        status=CustomerStatus.active,
    )
    # A customer created with the same email since the check above loses here.
    with unique_as_conflict(session, "customers", {"email": lead.email}, "customer"):
        session.add(customer)
        session.flush()
    lead.customer_id = customer.id
    # Only here: converting an already-converted lead publishes nothing.
    OUTBOX.publish(
        session,
        "lead.converted",
        {
            "lead_id": lead.id,
            "customer_id": customer.id,
            "name": customer.name,
            "email": customer.email,
            "company": customer.company,
        },
    )
    return ConversionResult(lead, customer, created=True)


def _already_converted(session: Session, lead: Lead) -> ConversionResult:
    if lead.converted_at is None:
        raise Problem(
            409,
            f"Lead {lead.id} is {lead.stage.value}; only a won lead can be converted.",
            kind="illegal-transition",
            extra={"current": lead.stage.value, "required": LeadStage.won.value},
        )
    customer = session.get(Customer, lead.customer_id) if lead.customer_id is not None else None
    if customer is None:
        raise conflict(
            f"Lead {lead.id} was converted on {lead.converted_at.isoformat()}, but that customer "
            "has since been deleted.",
            converted_at=lead.converted_at.isoformat(),
        )
    return ConversionResult(lead, customer, created=False)
