"""Active health checks: every instance's ``/health/ready``, periodically.

Readiness rather than liveness: a service whose database is unreachable is
alive but cannot serve, and should leave the rotation. A probe that fails
``unhealthy_threshold`` times in a row marks the instance down; one success
brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from bhiv.core.background import repeat
from bhiv.gateway.metrics import GatewayMetrics
from bhiv.gateway.registry import Instance, Registry
from bhiv.gateway.settings import GatewaySettings

log = logging.getLogger("bhiv.gateway.probes")
PROBE_PATH = "/health/ready"


class HealthChecker:
    def __init__(
        self, settings: GatewaySettings, registry: Registry, metrics: GatewayMetrics
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.gateway_health_timeout_seconds),
            trust_env=False,
            follow_redirects=False,
        )

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._settings.gateway_health_interval_seconds
        await repeat(stop, interval, self.check_all, what="health checks")

    async def check_all(self) -> None:
        targets = [
            (u.name, i) for u in list(self._registry.upstreams.values()) for i in u.instances
        ]
        await asyncio.gather(*(self._probe(name, inst) for name, inst in targets))

    async def _probe(self, service: str, inst: Instance) -> None:
        was = inst.health
        try:
            response = await self._http.get(inst.url + PROBE_PATH)
            ok = response.status_code == 200
            error = None if ok else f"{PROBE_PATH} answered {response.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{PROBE_PATH} failed: {type(exc).__name__}"
        self._registry.probe_result(inst, ok, error, self._settings.gateway_unhealthy_threshold)
        if inst.health != was:
            log.info(
                "%s instance %s is now %s%s",
                service,
                inst.url,
                inst.health.value,
                f" ({error})" if error else "",
            )
        self._metrics.instance_up.labels(service, inst.url).set(
            1 if inst.available(time.monotonic()) else 0
        )

    async def aclose(self) -> None:
        await self._http.aclose()
