"""Local discovery: the catalog's services at their ports, or an explicit list.

``bhiv up`` passes BHIV_GATEWAY_UPSTREAMS naming exactly what it started, so a
service it did not start is unknown (404) rather than down (503). Without it,
the gateway assumes every catalog service runs on 127.0.0.1 at its port plus
BHIV_GATEWAY_PORT_OFFSET.
"""

from __future__ import annotations

from bhiv import catalog
from bhiv.gateway.registry import DiscoveredService
from bhiv.gateway.settings import GatewaySettings

GATEWAY = "gateway"


def local_services(settings: GatewaySettings) -> list[DiscoveredService]:
    if settings.gateway_upstreams is None:
        return [
            DiscoveredService(
                entry.name,
                entry.prefix,
                (f"http://127.0.0.1:{entry.port + settings.gateway_port_offset}",),
                capabilities=entry.capabilities,
            )
            for entry in catalog.SERVICES.values()
            if entry.name != GATEWAY
        ]
    return [
        DiscoveredService(
            name,
            spec.prefix or catalog.get(name).prefix,
            tuple(spec.urls),
            capabilities=catalog.SERVICES[name].capabilities if name in catalog.SERVICES else (),
        )
        for name, spec in settings.gateway_upstreams.items()
    ]
