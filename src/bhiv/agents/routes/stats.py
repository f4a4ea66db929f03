"""Monitoring over the API (the same figures are on /metrics)."""

from bhiv.agents.monitoring import overview
from bhiv.agents.schemas import Overview
from bhiv.core.db import SessionDep
from bhiv.core.routing import service_router

router = service_router(tags=["monitoring"])


@router.get(
    "/stats",
    response_model=Overview,
    summary="Success rate, latency and queue depth",
    description="Per agent and per workflow: succeeded, failed, success rate, mean and p95 latency "
    "(most recent 1000); per capability: queued, running and the oldest wait.",
)
def stats(session: SessionDep) -> Overview:
    return overview(session)
