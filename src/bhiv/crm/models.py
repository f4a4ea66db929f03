"""CRM tables: customers with tags and an interaction timeline, leads in a
sales pipeline, and support tickets with comments.

Deleting a customer removes its interactions and tickets in the database
(``ON DELETE CASCADE``), so a delete racing an insert can never leave orphans;
a lead converted into a deleted customer keeps ``converted_at`` and loses only
the link (``SET NULL``).
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bhiv.core.db import Timestamps, UTCDateTime, new_metadata, string_enum, utcnow
from bhiv.core.outbox import Outbox


class Base(DeclarativeBase):
    metadata = new_metadata()


# Domain events (``lead.converted``), committed with the change they describe
# and relayed to the integrations service (docs/integrations.md).
OUTBOX = Outbox(Base.metadata, source="crm")


class CustomerStatus(enum.StrEnum):
    active = "active"
    inactive = "inactive"
    churned = "churned"


class InteractionKind(enum.StrEnum):
    call = "call"
    email = "email"
    meeting = "meeting"
    note = "note"


class LeadStage(enum.StrEnum):
    new = "new"
    contacted = "contacted"
    qualified = "qualified"
    proposal = "proposal"
    won = "won"
    lost = "lost"


class LeadSource(enum.StrEnum):
    referral = "referral"
    partner = "partner"
    event = "event"
    website = "website"
    advertising = "advertising"
    cold_call = "cold_call"
    other = "other"


class TicketPriority(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    urgent = "urgent"


class TicketStatus(enum.StrEnum):
    open = "open"
    in_progress = "in_progress"
    waiting = "waiting"
    resolved = "resolved"
    closed = "closed"


# Tickets someone still has to work on: they count against the SLA and block
# deleting their customer.
UNRESOLVED = frozenset({TicketStatus.open, TicketStatus.in_progress, TicketStatus.waiting})


class Customer(Timestamps, Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200), index=True)
    # Stored lower-cased by the API, so uniqueness ignores case.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[CustomerStatus] = mapped_column(
        string_enum(CustomerStatus, "customer_status"), default=CustomerStatus.active, index=True
    )
    owner: Mapped[str | None] = mapped_column(String(200), index=True)

    tag_rows: Mapped[list[CustomerTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    @property
    def tags(self) -> list[str]:
        return sorted(row.tag for row in self.tag_rows)

    @tags.setter
    def tags(self, wanted: list[str] | None) -> None:
        # Keep the rows that stay and add or drop only the difference: replacing
        # the whole collection would insert (customer, tag) before deleting the
        # old row with the same key.
        wanted_set = set(wanted or ())
        kept = [row for row in self.tag_rows if row.tag in wanted_set]
        have = {row.tag for row in kept}
        self.tag_rows = kept + [CustomerTag(tag=t) for t in sorted(wanted_set - have)]


class CustomerTag(Base):
    __tablename__ = "customer_tags"

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(50), primary_key=True, index=True)


class Interaction(Base):
    """One entry of a customer's timeline; append-only."""

    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_customer_id_occurred_at", "customer_id", "occurred_at"),
        # Named for its field, so a repeat is a 409 naming `reference` (unique_as_conflict).
        UniqueConstraint("customer_id", "reference", name="uq_interactions_reference"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[InteractionKind] = mapped_column(string_enum(InteractionKind, "interaction_kind"))
    subject: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    # The caller's own key (e.g. an order number): recording it again is a 409, not a copy.
    reference: Mapped[str | None] = mapped_column(String(100))
    author: Mapped[str] = mapped_column(String(200), index=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lead(Timestamps, Base):
    __tablename__ = "leads"
    __table_args__ = (
        CheckConstraint("expected_value >= 0", name="expected_value_nonnegative"),
        CheckConstraint("score >= 0 AND score <= 100", name="score_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    source: Mapped[LeadSource] = mapped_column(
        string_enum(LeadSource, "lead_source"), default=LeadSource.other
    )
    stage: Mapped[LeadStage] = mapped_column(
        string_enum(LeadStage, "lead_stage"), default=LeadStage.new, index=True
    )
    expected_value: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    notes: Mapped[str | None] = mapped_column(Text)
    # Derived from the other fields by lead_scoring; stored so lists can sort and filter by it.
    score: Mapped[int] = mapped_column(Integer, default=0, index=True)
    lost_reason: Mapped[str | None] = mapped_column(String(500))
    stage_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    converted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL"), index=True
    )


class Ticket(Timestamps, Base):
    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_status_due_at", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    subject: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[TicketPriority] = mapped_column(
        string_enum(TicketPriority, "ticket_priority"), default=TicketPriority.medium, index=True
    )
    status: Mapped[TicketStatus] = mapped_column(
        string_enum(TicketStatus, "ticket_status"), default=TicketStatus.open
    )
    assignee: Mapped[str | None] = mapped_column(String(200), index=True)
    # The SLA clock starts at creation and restarts when the ticket is reopened.
    sla_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Stored when resolved, so analytics can average it on any backend.
    resolution_seconds: Mapped[int | None] = mapped_column(Integer)

    @property
    def overdue(self) -> bool:
        return self.status in UNRESOLVED and self.due_at < utcnow()


class TicketComment(Base):
    __tablename__ = "ticket_comments"
    __table_args__ = (Index("ix_ticket_comments_ticket_id_id", "ticket_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    author: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
