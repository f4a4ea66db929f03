"""Fixtures shared by every tier: servers, databases, tokens."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support import realnode
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.servers import ServiceProcess, service_process

_TIER_BY_FOLDER = {
    "unit": "unit",
    "service": "service",
    "browser": "browser",
    "realnode": "realnode",
    "e2e": "e2e",
}
# Tiers that bring up a whole cluster run last: the node's daemons and pods would
# otherwise share the two cores with every service test, and its session-wide
# teardown comes right after them.
_LAST = ("realnode", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder names the tier, so `pytest -m unit` needs no per-test marks.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in _TIER_BY_FOLDER.items():
            if folder in parts:
                item.add_marker(marker)
    items.sort(key=lambda item: any(item.get_closest_marker(m) for m in _LAST))


@pytest.fixture(scope="session")
def real_node() -> Iterator[realnode.RealNode]:
    """The real single-node cluster (tests/support/realnode.py), up for the session."""
    try:
        with realnode.running_node() as node:
            yield node
    except realnode.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def docker_for_images() -> Iterator[None]:
    """dockerd to build and save images into the real node (stopped if started here)."""
    with realnode.dockerd():
        yield


@pytest.fixture(scope="session")
def node_image(real_node: realnode.RealNode, docker_for_images: None) -> str:
    """The project image, built with hack/build-image and loaded into the real node."""
    image = os.environ.get("BHIV_TEST_IMAGE", "")
    if not image:
        image = "bhiv-core:realnode"
        realnode.build_image(image)
    real_node.load_image(image)
    return image


def _postgres_or_skip() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (each user gets a fresh database)."""
    yield from _postgres_or_skip()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test module alone: for tests that stop it, or that
    use fixed database names."""
    yield from _postgres_or_skip()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run_service(
    name: str, backend: str, request: pytest.FixtureRequest, **env: str
) -> Generator[ServiceProcess, None, None]:
    """Start service ``name`` on ``backend`` for a fixture; stops it afterwards.

    Use from a service's own conftest:
    ``yield from run_service("crm", backend, request)`` in a module-scoped fixture.
    """
    url = request.getfixturevalue("postgres").create_database() if backend == "postgres" else None
    tmp = request.getfixturevalue("tmp_path_factory").mktemp(f"{name}-{backend}")
    server = service_process(name, tmp, url, **env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def logistics(backend: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """The Logistics service over real HTTP, on SQLite or PostgreSQL."""
    yield from run_service("logistics", backend, request)
