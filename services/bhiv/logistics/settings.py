from __future__ import annotations

from pydantic import Field

from bhiv import catalog
from bhiv.core.settings import ServiceSettings


class LogisticsSettings(ServiceSettings):
    """Logistics settings: everything in :class:`ServiceSettings`, port 8001."""

    service_name = "logistics"
    port: int = Field(catalog.get("logistics").port, ge=1, le=65535)
