"""Prometheus metrics of the outbound webhook queue.

The deliveries table is the queue every replica shares, so the numbers are read from
it at scrape time: each replica reports the same totals (aggregate with max, not sum).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from bhiv.core.metrics import DatabaseCollector
from bhiv.integrations.models import Delivery, DeliveryStatus


class DeliveryCollector(DatabaseCollector):
    def collect(self) -> Iterator[Any]:
        with self.db.session(write=False) as session:
            rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
            counts = {status: n for status, n in rows}
        deliveries = GaugeMetricFamily(
            "bhiv_webhook_deliveries",
            "Webhook deliveries by status: pending is the backlog, dead the dead letters.",
            labels=["status"],
        )
        for status in DeliveryStatus:
            deliveries.add_metric([status.value], counts.get(status, 0))
        yield deliveries


@asynccontextmanager
async def delivery_metrics(app: FastAPI) -> AsyncIterator[None]:
    app.state.metrics.registry.register(DeliveryCollector(app.state.db))
    yield
