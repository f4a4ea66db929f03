"""Ports for test servers never race with the kernel's choice of local ports for
outgoing connections (the cause of one "address already in use" in the operator tier)."""

from __future__ import annotations

import socket

from bhiv import catalog
from tests.support.net import ephemeral_start, free_port
from tests.support.up import free_offset


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    start = ephemeral_start()
    ports = [free_port() for _ in range(50)]
    assert all(20000 <= p < start for p in ports), ports
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_offered(monkeypatch) -> None:  # noqa: ANN001
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        wanted = [taken.getsockname()[1], 24000]
        monkeypatch.setattr("tests.support.net.random.randrange", lambda a, b: wanted.pop(0))
        assert free_port() == 24000


def test_bhiv_up_offsets_keep_every_service_port_below_the_ephemeral_range() -> None:
    # `bhiv up --port-offset` in the tests and bench/startup.py: a gateway port inside
    # the range was once taken by an outgoing connection before the gateway bound it.
    start = ephemeral_start()
    for _ in range(20):
        offset = free_offset()
        ports = [e.port + offset for e in catalog.SERVICES.values()]
        assert all(20000 <= p < start for p in ports), (offset, ports)
