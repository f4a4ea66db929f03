"""Monitoring over the API (the same figures are on /metrics)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from bhiv.agents.monitoring import overview
from bhiv.agents.schemas import Overview
from bhiv.core import get_session

router = APIRouter(tags=["monitoring"])


@router.get(
    "/stats",
    response_model=Overview,
    summary="Success rate, latency and queue depth",
    description="Per agent and per workflow: succeeded, failed, success rate, mean and p95 latency "
    "(most recent 1000); per capability: queued, running and the oldest wait.",
)
def stats(session: Annotated[Session, Depends(get_session)]) -> Overview:
    return overview(session)
