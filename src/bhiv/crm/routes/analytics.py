"""CRM analytics, computed by the database in a handful of aggregate queries."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from bhiv.core import utcnow
from bhiv.core.db import SessionDep
from bhiv.core.routing import service_router
from bhiv.crm.models import (
    UNRESOLVED,
    Customer,
    CustomerStatus,
    Lead,
    LeadStage,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from bhiv.crm.schemas import CrmAnalytics, CustomerStats, PipelineStats, StageTotals, TicketStats

router = service_router(tags=["analytics"])
OPEN_STAGES = (LeadStage.new, LeadStage.contacted, LeadStage.qualified, LeadStage.proposal)


def _money(value: object) -> Decimal:
    return Decimal(str(value or 0)).quantize(Decimal("0.01"))


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _counts(
    session: Session, column: InstrumentedAttribute[Any], values: type[enum.StrEnum]
) -> dict[str, int]:
    """Rows per value of ``column``, with a 0 for every value that has none."""
    found: dict[Any, int] = dict(
        session.execute(select(column, func.count()).group_by(column)).tuples().all()
    )
    return {v.value: found.get(v, 0) for v in values}


def _pipeline(session: Session) -> PipelineStats:
    per_stage = {
        stage: (n, value)
        for stage, n, value in session.execute(
            select(
                Lead.stage, func.count(), func.coalesce(func.sum(Lead.expected_value), 0)
            ).group_by(Lead.stage)
        )
    }
    by_stage = {}
    for stage in LeadStage:
        n, value = per_stage.get(stage, (0, 0))
        by_stage[stage] = StageTotals(stage=stage, leads=n, value=_money(value))
    leads = sum(t.leads for t in by_stage.values())
    won, lost = by_stage[LeadStage.won].leads, by_stage[LeadStage.lost].leads
    converted = session.scalar(select(func.count()).where(Lead.converted_at.is_not(None))) or 0
    return PipelineStats(
        by_stage=list(by_stage.values()),
        open_value=_money(sum(by_stage[s].value for s in OPEN_STAGES)),
        leads=leads,
        won=won,
        lost=lost,
        converted=converted,
        win_rate=_ratio(won, won + lost),
        conversion_rate=_ratio(converted, leads),
    )


def _tickets(session: Session) -> TicketStats:
    by_status = _counts(session, Ticket.status, TicketStatus)
    overdue = session.scalar(
        select(func.count()).where(Ticket.status.in_(UNRESOLVED), Ticket.due_at < utcnow())
    )
    resolved, mean = session.execute(
        select(func.count(Ticket.resolution_seconds), func.avg(Ticket.resolution_seconds))
    ).one()
    return TicketStats(
        total=sum(by_status.values()),
        by_status=by_status,
        by_priority=_counts(session, Ticket.priority, TicketPriority),
        overdue=overdue or 0,
        resolved=resolved,
        mean_resolution_seconds=round(float(mean), 1) if mean is not None else None,
    )


@router.get(
    "/analytics/overview",
    response_model=CrmAnalytics,
    summary="Customers, pipeline and support at a glance",
    description="Customers by status; leads and expected value per pipeline stage, win and "
    "conversion rates; tickets per status and priority, overdue tickets and the mean "
    "resolution time.",
)
def overview(session: SessionDep) -> CrmAnalytics:
    by_status = _counts(session, Customer.status, CustomerStatus)
    return CrmAnalytics(
        customers=CustomerStats(total=sum(by_status.values()), by_status=by_status),
        pipeline=_pipeline(session),
        tickets=_tickets(session),
    )
