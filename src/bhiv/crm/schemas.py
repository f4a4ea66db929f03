"""Request and response bodies. Every field is described and has an example,
so /docs is a usable reference on its own."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bhiv.core.fields import StorableText, UTCTimestamp
from bhiv.crm.lead_pipeline import LEAD_WORKFLOW
from bhiv.crm.lead_scoring import score_lead
from bhiv.crm.models import (
    CustomerStatus,
    InteractionKind,
    Lead,
    LeadSource,
    LeadStage,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from bhiv.crm.ticket_workflow import TICKET_WORKFLOW

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), StorableText
]
# Who owns or works on something: a user's subject as it appears in their token.
Principal = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), StorableText
]
# Lower-cased, so that uniqueness and lookups ignore case.
Email = Annotated[EmailStr, AfterValidator(str.lower)]
Phone = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=50, pattern=r"^\+?[0-9][0-9 ().-]*$"
    ),
]
Tag = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, min_length=1, max_length=50, pattern=r"^\w[\w .-]*$"
    ),
]
Reference = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), StorableText
]
Notes = Annotated[str, StringConstraints(max_length=20_000), StorableText]
Body = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000), StorableText
]
# Quantized on the way in, so a value reads back the same on every backend.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=12, decimal_places=2),
    AfterValidator(lambda d: d.quantize(Decimal("0.01"))),
]
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]
Tags = Annotated[list[Tag], Field(max_length=20)]

_CREATED = "When it was created (UTC)."
_UPDATED = "When it last changed (UTC)."
_OWNER = "The user responsible (their token subject); null: unassigned."


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _row_and(model: type[BaseModel], row: object, **derived: Any) -> dict[str, Any]:
    """A read model's input: its fields as stored on ``row``, plus ``derived`` ones."""
    return {
        name: getattr(row, name) for name in model.model_fields if name not in derived
    } | derived


# --- customers --------------------------------------------------------------------


class CustomerCreate(_Model):
    name: Name = Field(description="Contact or account name.", examples=["Asha Rao"])
    company: Name | None = Field(None, description="Company name.", examples=["Acme Industries"])
    email: Email = Field(
        description="Unique email, compared without case.", examples=["asha@acme.example"]
    )
    phone: Phone | None = Field(None, description="Phone number.", examples=["+91 80 5555 0100"])
    status: CustomerStatus = Field(
        CustomerStatus.active, description="Relationship status.", examples=["active"]
    )
    tags: Tags = Field(
        default_factory=list,
        description="Labels, lower-cased; duplicates are dropped.",
        examples=[["vip", "retail"]],
    )
    owner: Principal | None = Field(None, description=_OWNER, examples=["sales.rep@bhiv"])


class CustomerUpdate(_Model):
    name: Name | None = Field(None, description="Contact or account name.", examples=["Asha Rao"])
    company: Name | None = Field(None, description="Company name.", examples=["Acme Industries"])
    email: Email | None = Field(
        None, description="Unique email, compared without case.", examples=["asha@acme.example"]
    )
    phone: Phone | None = Field(None, description="Phone number.", examples=["+91 80 5555 0100"])
    status: CustomerStatus | None = Field(
        None, description="Relationship status.", examples=["churned"]
    )
    tags: Tags | None = Field(
        None, description="Replaces all tags; [] removes them.", examples=[["vip"]]
    )
    owner: Principal | None = Field(None, description=_OWNER, examples=["sales.rep@bhiv"])

    @field_validator("tags")
    @classmethod
    def _tags_not_null(cls, value: list[str] | None) -> list[str]:
        if value is None:
            raise ValueError("may not be null; send [] to remove every tag")
        return value


class CustomerRead(_Read):
    id: int = Field(description="Customer ID.", examples=[1])
    name: str = Field(description="Contact or account name.", examples=["Asha Rao"])
    company: str | None = Field(description="Company name.", examples=["Acme Industries"])
    email: str = Field(description="Unique email (lower case).", examples=["asha@acme.example"])
    phone: str | None = Field(description="Phone number.", examples=["+91 80 5555 0100"])
    status: CustomerStatus = Field(description="Relationship status.", examples=["active"])
    tags: list[str] = Field(description="Labels, sorted.", examples=[["retail", "vip"]])
    owner: str | None = Field(description=_OWNER, examples=["sales.rep@bhiv"])
    created_at: dt.datetime = Field(description=_CREATED)
    updated_at: dt.datetime = Field(description=_UPDATED)


# --- interactions -----------------------------------------------------------------


class InteractionCreate(_Model):
    kind: InteractionKind = Field(description="What sort of contact it was.", examples=["call"])
    subject: Name = Field(description="One line on what it was about.", examples=["Renewal terms"])
    notes: Notes | None = Field(
        None, description="Free text.", examples=["Wants a 3-year deal at the current price."]
    )
    reference: Reference | None = Field(
        None,
        description="Your own key for it, unique per customer: recording the same reference "
        "again is a 409, so a retried or repeated request does not add a copy.",
        examples=["order-SO-1001"],
    )
    occurred_at: UTCTimestamp | None = Field(
        None,
        description="When it happened, with a UTC offset (default: now).",
        examples=["2026-03-01T10:30:00Z"],
    )


class InteractionRead(_Read):
    id: int = Field(description="Interaction ID.", examples=[1])
    customer_id: int = Field(description="The customer.", examples=[1])
    kind: InteractionKind = Field(description="What sort of contact it was.", examples=["call"])
    subject: str = Field(description="One line on what it was about.", examples=["Renewal terms"])
    notes: str | None = Field(
        description="Free text.", examples=["Wants a 3-year deal at the current price."]
    )
    reference: str | None = Field(
        description="Your own key for it, unique per customer.", examples=["order-SO-1001"]
    )
    author: str = Field(
        description="Who recorded it (the caller's token subject).", examples=["sales.rep@bhiv"]
    )
    occurred_at: dt.datetime = Field(description="When it happened (UTC).")
    created_at: dt.datetime = Field(description="When it was recorded (UTC).")


# --- leads ------------------------------------------------------------------------


class LeadCreate(_Model):
    name: Name = Field(description="The prospect's name.", examples=["Ravi Menon"])
    company: Name | None = Field(None, description="Their company.", examples=["Globex"])
    email: Email | None = Field(
        None,
        description="Their email; needed to convert the lead.",
        examples=["ravi@globex.example"],
    )
    phone: Phone | None = Field(
        None, description="Their phone number.", examples=["+91 22 5555 0199"]
    )
    source: LeadSource = Field(
        LeadSource.other, description="Where the lead came from.", examples=["referral"]
    )
    expected_value: Money = Field(
        Decimal("0.00"), description="Expected deal value.", examples=["25000.00"]
    )
    owner: Principal | None = Field(None, description=_OWNER, examples=["sales.rep@bhiv"])
    notes: Notes | None = Field(None, description="Free text.", examples=["Met at the Pune expo."])


class LeadUpdate(_Model):
    """The stage changes only through transitions; the score is always derived."""

    name: Name | None = Field(None, description="The prospect's name.", examples=["Ravi Menon"])
    company: Name | None = Field(None, description="Their company.", examples=["Globex"])
    email: Email | None = Field(
        None,
        description="Their email; needed to convert the lead.",
        examples=["ravi@globex.example"],
    )
    phone: Phone | None = Field(
        None, description="Their phone number.", examples=["+91 22 5555 0199"]
    )
    source: LeadSource | None = Field(
        None, description="Where the lead came from.", examples=["referral"]
    )
    expected_value: Money | None = Field(
        None, description="Expected deal value.", examples=["25000.00"]
    )
    owner: Principal | None = Field(None, description=_OWNER, examples=["sales.rep@bhiv"])
    notes: Notes | None = Field(None, description="Free text.", examples=["Met at the Pune expo."])


class ScoreFactor(BaseModel):
    factor: str = Field(description="What is scored.", examples=["source"])
    value: str = Field(description="The lead's value for it.", examples=["referral"])
    points: int = Field(description="Points it earns.", examples=[20])
    max_points: int = Field(description="The most it can earn.", examples=[20])


class LeadRead(_Read):
    id: int = Field(description="Lead ID.", examples=[1])
    name: str = Field(description="The prospect's name.", examples=["Ravi Menon"])
    company: str | None = Field(description="Their company.", examples=["Globex"])
    email: str | None = Field(
        description="Their email (lower case).", examples=["ravi@globex.example"]
    )
    phone: str | None = Field(description="Their phone number.", examples=["+91 22 5555 0199"])
    source: LeadSource = Field(description="Where the lead came from.", examples=["referral"])
    stage: LeadStage = Field(description="Pipeline stage.", examples=["qualified"])
    next_stages: list[LeadStage] = Field(
        description="Stages a transition may move it to.", examples=[["lost", "proposal"]]
    )
    expected_value: Decimal = Field(description="Expected deal value.", examples=["25000.00"])
    owner: str | None = Field(description=_OWNER, examples=["sales.rep@bhiv"])
    notes: str | None = Field(description="Free text.", examples=["Met at the Pune expo."])
    score: int = Field(
        description="0-100, the sum of score_factors' points (docs/crm.md).", examples=[83]
    )
    score_factors: list[ScoreFactor] = Field(
        description="Where each point of the score comes from."
    )
    lost_reason: str | None = Field(description="Why it was lost.", examples=[None])
    stage_changed_at: dt.datetime = Field(description="When it entered its current stage (UTC).")
    converted_at: dt.datetime | None = Field(
        description="When it was converted into a customer (UTC)."
    )
    customer_id: int | None = Field(
        description="The customer it became (null if not converted, or that customer was deleted).",
        examples=[None],
    )
    created_at: dt.datetime = Field(description=_CREATED)
    updated_at: dt.datetime = Field(description=_UPDATED)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if not isinstance(data, Lead):
            return data
        return _row_and(
            cls,
            data,
            score_factors=[asdict(f) for f in score_lead(data).factors],
            next_stages=LEAD_WORKFLOW.allowed(data.stage),
        )


class LeadTransition(_Model):
    stage: LeadStage = Field(description="The next stage.", examples=["contacted"])
    lost_reason: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
            StorableText,
        ]
        | None
    ) = Field(
        None,
        description="Why the lead was lost; only with stage lost.",
        examples=["Chose a competitor"],
    )

    @field_validator("lost_reason")
    @classmethod
    def _only_when_lost(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("stage") != LeadStage.lost:
            raise ValueError("is only allowed when the stage becomes lost")
        return value


class Conversion(BaseModel):
    lead: LeadRead = Field(description="The converted lead, now linked to its customer.")
    customer: CustomerRead = Field(description="The customer the lead became.")
    created: bool = Field(
        description="True when this call created the customer; false on a repeat.", examples=[True]
    )


# --- tickets ----------------------------------------------------------------------


class TicketCreate(_Model):
    customer_id: RowId = Field(description="The customer who raised it.", examples=[1])
    subject: Name = Field(
        description="One line on the problem.", examples=["Invoice shows the wrong address"]
    )
    description: Notes | None = Field(
        None,
        description="The details.",
        examples=["Since March the billing address is the old office."],
    )
    priority: TicketPriority = Field(
        TicketPriority.medium, description="Sets the SLA due time.", examples=["high"]
    )
    assignee: Principal | None = Field(
        None, description="Who works on it; null: unassigned.", examples=["support.agent@bhiv"]
    )


class TicketUpdate(_Model):
    """The status changes only through transitions."""

    subject: Name | None = Field(
        None, description="One line on the problem.", examples=["Invoice shows the wrong address"]
    )
    description: Notes | None = Field(
        None,
        description="The details.",
        examples=["Since March the billing address is the old office."],
    )
    priority: TicketPriority | None = Field(
        None,
        description="Changing it moves the due time: SLA window start + the new priority's window.",
        examples=["urgent"],
    )
    assignee: Principal | None = Field(
        None, description="Who works on it; null: unassigned.", examples=["support.agent@bhiv"]
    )


class TicketRead(_Read):
    id: int = Field(description="Ticket ID.", examples=[1])
    customer_id: int = Field(description="The customer who raised it.", examples=[1])
    subject: str = Field(
        description="One line on the problem.", examples=["Invoice shows the wrong address"]
    )
    description: str | None = Field(
        description="The details.", examples=["Since March the billing address is the old office."]
    )
    priority: TicketPriority = Field(description="Sets the SLA due time.", examples=["high"])
    status: TicketStatus = Field(description="Where it is in its workflow.", examples=["open"])
    next_statuses: list[TicketStatus] = Field(
        description="Statuses a transition may move it to.",
        examples=[["in_progress", "resolved", "waiting"]],
    )
    assignee: str | None = Field(
        description="Who works on it; null: unassigned.", examples=["support.agent@bhiv"]
    )
    sla_started_at: dt.datetime = Field(
        description="When the SLA clock started: creation or the last reopen (UTC)."
    )
    due_at: dt.datetime = Field(
        description="SLA due time: sla_started_at + the priority's window (UTC)."
    )
    overdue: bool = Field(
        description="Unresolved (open, in_progress, waiting) and past due_at.", examples=[False]
    )
    resolved_at: dt.datetime | None = Field(description="When it was last resolved (UTC).")
    closed_at: dt.datetime | None = Field(description="When it was closed (UTC).")
    resolution_seconds: int | None = Field(
        description="Seconds from creation to resolved_at.", examples=[5400]
    )
    created_at: dt.datetime = Field(description=_CREATED)
    updated_at: dt.datetime = Field(description=_UPDATED)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        if not isinstance(data, Ticket):
            return data
        return _row_and(cls, data, next_statuses=TICKET_WORKFLOW.allowed(data.status))


class TicketTransition(_Model):
    status: TicketStatus = Field(
        description="The next status; open reopens a resolved or closed ticket.",
        examples=["in_progress"],
    )
    comment: Body | None = Field(
        None, description="Added as a comment by the caller.", examples=["Looking into it."]
    )


class CommentCreate(_Model):
    body: Body = Field(description="The comment.", examples=["Sent the corrected invoice."])
    internal: bool = Field(False, description="Visible to staff only.", examples=[False])


class CommentRead(_Read):
    id: int = Field(description="Comment ID.", examples=[1])
    ticket_id: int = Field(description="The ticket.", examples=[1])
    body: str = Field(description="The comment.", examples=["Sent the corrected invoice."])
    internal: bool = Field(description="Visible to staff only.", examples=[False])
    author: str = Field(
        description="Who wrote it (the caller's token subject).", examples=["support.agent@bhiv"]
    )
    created_at: dt.datetime = Field(description="When it was written (UTC).")


# --- analytics --------------------------------------------------------------------


class CustomerStats(BaseModel):
    total: int = Field(description="All customers.", examples=[120])
    by_status: dict[str, int] = Field(
        description="Customers per status.",
        examples=[{"active": 100, "inactive": 12, "churned": 8}],
    )


class StageTotals(BaseModel):
    stage: LeadStage = Field(description="Pipeline stage.", examples=["proposal"])
    leads: int = Field(description="Leads in the stage.", examples=[4])
    value: Decimal = Field(description="Sum of their expected values.", examples=["90000.00"])


class PipelineStats(BaseModel):
    by_stage: list[StageTotals] = Field(description="Every stage, in pipeline order.")
    open_value: Decimal = Field(
        description="Expected value of leads not yet won or lost.", examples=["150000.00"]
    )
    leads: int = Field(description="All leads.", examples=[40])
    won: int = Field(description="Leads won.", examples=[8])
    lost: int = Field(description="Leads lost.", examples=[12])
    converted: int = Field(description="Leads converted into customers.", examples=[7])
    win_rate: float | None = Field(
        description="won / (won + lost); null before any lead closes.", examples=[0.4]
    )
    conversion_rate: float | None = Field(
        description="converted / leads; null without leads.", examples=[0.175]
    )


class TicketStats(BaseModel):
    total: int = Field(description="All tickets.", examples=[60])
    by_status: dict[str, int] = Field(
        description="Tickets per status.", examples=[{"open": 5, "closed": 50}]
    )
    by_priority: dict[str, int] = Field(
        description="Tickets per priority.", examples=[{"urgent": 2, "medium": 40}]
    )
    overdue: int = Field(description="Unresolved tickets past their due time.", examples=[1])
    resolved: int = Field(description="Tickets resolved or closed after resolution.", examples=[52])
    mean_resolution_seconds: float | None = Field(
        description="Mean seconds from creation to resolution over resolved tickets; null if none.",
        examples=[7200.0],
    )


class CrmAnalytics(BaseModel):
    customers: CustomerStats
    pipeline: PipelineStats
    tickets: TicketStats
