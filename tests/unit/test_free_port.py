"""Ports for test servers never race with the kernel's choice of local ports for
outgoing connections (the cause of one "address already in use" in the operator tier)."""

from __future__ import annotations

import socket

from tests.support.net import _ephemeral_start, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    start = _ephemeral_start()
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
