"""The CRM service over real HTTP, on SQLite and PostgreSQL: one server per test
module and backend."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import run_service
from tests.support.servers import ServiceProcess

# Urgent tickets fall due after 2 seconds, so overdue tickets can be tested
# without a clock; the other priorities keep the documented defaults.
URGENT_SLA_SECONDS = 2


@pytest.fixture(scope="module")
def crm(backend: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    yield from run_service(
        "crm", backend, request, BHIV_TICKET_SLA=json.dumps({"urgent": f"PT{URGENT_SLA_SECONDS}S"})
    )
