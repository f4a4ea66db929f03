from __future__ import annotations

from pydantic import Field

from bhiv import catalog
from bhiv.core.outbox import OutboxSettings


class LogisticsSettings(OutboxSettings):
    """Logistics settings: everything in :class:`ServiceSettings` and the outbox relay's, port 8001."""

    service_name = "logistics"
    port: int = Field(catalog.get("logistics").port, ge=1, le=65535)
