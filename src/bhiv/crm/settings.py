from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from bhiv import catalog
from bhiv.core.outbox import OutboxSettings
from bhiv.crm.models import TicketPriority

SlaWindow = Annotated[dt.timedelta, Field(gt=dt.timedelta(0), le=dt.timedelta(days=365))]


class TicketSla(BaseModel):
    """How long a ticket of each priority may stay unresolved (docs/crm.md has the table).

    Set as JSON with ISO 8601 durations or seconds, e.g.
    ``BHIV_TICKET_SLA='{"urgent": "PT2H"}'``; priorities left out keep their default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    urgent: SlaWindow = dt.timedelta(hours=4)
    high: SlaWindow = dt.timedelta(hours=24)
    medium: SlaWindow = dt.timedelta(hours=72)
    low: SlaWindow = dt.timedelta(hours=168)

    def window(self, priority: TicketPriority) -> dt.timedelta:
        window: dt.timedelta = getattr(self, priority.value)
        return window


class CrmSettings(OutboxSettings):
    """CRM settings: everything in :class:`ServiceSettings` and :class:`OutboxSettings`
    (where the outbox relay sends events), port 8002, ticket SLAs."""

    service_name = "crm"
    port: int = Field(catalog.get("crm").port, ge=1, le=65535)
    ticket_sla: TicketSla = Field(
        default_factory=TicketSla, description="Resolution windows by ticket priority."
    )
