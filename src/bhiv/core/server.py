"""How every service is served: uvicorn, with limits on connections as well as requests.

uvicorn's own ``limit_concurrency`` counts *connections* (and tasks), and it
arms no timer on a connection until its first response: a client that opens
sockets and sends nothing (or drips a header byte at a time) holds them for
ever, and enough of them make every request, ``/health`` included, a 503. So:

- a connection must deliver each request's head (request line and headers)
  within ``header_timeout_seconds`` of its first byte, or of being opened, or
  it is closed (:class:`HeadDeadline`, on uvicorn's own HTTP protocol class);
  idle keep-alive connections are closed by uvicorn after ``keep_alive_seconds``;
- *requests* are limited per request by the app (``LoadShedMiddleware``:
  ``max_concurrency`` at once, then a bounded queue, then 503 problems), with
  liveness and readiness exempt;
- ``max_connections`` stays uvicorn's ``limit_concurrency``, set well above
  the request limit: the last guard for file descriptors, not the load limit.

Graceful shutdown, uvicorn's access to the app and the framework's access log
are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from bhiv.core.settings import ServiceSettings

GRACEFUL_SHUTDOWN_SECONDS = 20


class HeadDeadline:
    """Mixed into uvicorn's HTTP protocol: closes a connection whose request head is late.

    The deadline starts when the connection opens and whenever a new request's
    first bytes arrive, and is never extended by more bytes: only a complete
    head (uvicorn then starts a request cycle) cancels it.
    """

    header_timeout: float = 5.0
    _head_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if self._between_requests() and not transport.is_closing():
            transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if not self._between_requests():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline for request heads."""
    return type(
        "BoundedHttpProtocol", (HeadDeadline, AutoHTTPProtocol), {"header_timeout": header_timeout}
    )


def run(application: Any, settings: ServiceSettings) -> None:
    """Serve ``application`` in the foreground until SIGINT/SIGTERM, then drain."""
    import uvicorn

    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings.header_timeout_seconds),
        log_config=None,  # the framework's JSON logging stays in charge
        access_log=False,
        # Proxy headers are the app's, from BHIV_TRUSTED_PROXIES (bhiv.core.app).
        proxy_headers=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        limit_concurrency=settings.max_connections,
    )
