"""A service whose PostgreSQL goes away and comes back: while it is down, requests get
a 503 problem quickly (never a hang, never a 500) and readiness fails; once it is
back, the same process answers again by itself. A service started while its
database is down waits for it instead of exiting.

The server (`own_postgres`) is this module's own, since the tests stop it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer
from tests.support.servers import service_process

pytestmark = pytest.mark.postgres


def test_requests_get_503_while_the_database_is_down_and_recover(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    logistics = service_process("logistics", tmp_path, own_postgres.create_database()).start()
    try:
        client = logistics.client()
        created = client.post(
            "/inventory",
            json={"sku": "OUT-1", "name": "outage", "quantity": 3, "unit_cost": "1.00"},
        )
        assert created.status_code == 201, created.text
        path = f"/inventory/{created.json()['id']}"
        own_postgres.stop("fast")
        try:
            for method, url, body in (
                ("GET", path, None),
                (
                    "POST",
                    "/inventory",
                    {"sku": "OUT-2", "name": "x", "quantity": 1, "unit_cost": "1"},
                ),
            ):
                started = time.monotonic()
                r = client.request(method, url, json=body)
                assert r.status_code == 503, (method, r.status_code, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["type"] == "https://bhiv.io/problems/database-unavailable"
                assert r.headers["retry-after"] == "5"
                assert time.monotonic() - started < 10  # answered, not held
            assert client.get("/health/ready").status_code == 503
            assert client.get("/health").status_code == 200  # alive: no restart needed
        finally:
            own_postgres.resume()
        # Back without a restart: the pool's pre-ping replaces the dead connections.
        assert client.get(path).status_code == 200
        assert client.get("/health/ready").status_code == 200
        # The log says what happened, and never the database URL's credentials.
        assert "database unavailable on GET" in logistics.log()
    finally:
        logistics.stop()


def test_a_service_started_before_its_database_waits_for_it(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.create_database()
    own_postgres.stop()
    crm = service_process("crm", tmp_path, url, BHIV_DATABASE_WAIT_SECONDS="60")
    try:
        resumed = False

        # start() polls readiness while the process lives; bring the server back meanwhile.
        def resume_later() -> None:
            nonlocal resumed
            time.sleep(4)
            own_postgres.resume()
            resumed = True

        thread = threading.Thread(target=resume_later)
        thread.start()
        crm.start()
        thread.join()
        assert resumed
        assert crm.client().get("/customers").status_code == 200
        assert "database not reachable yet (OperationalError); retrying" in crm.log()
    finally:
        crm.stop()
        if not resumed:
            own_postgres.resume()


def test_a_service_gives_up_when_the_database_never_comes(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.create_database()
    own_postgres.stop()
    try:
        crm = service_process("crm", tmp_path, url, BHIV_DATABASE_WAIT_SECONDS="2")
        with pytest.raises(RuntimeError, match="did not start"):
            crm.start()
        assert crm.process is not None and crm.process.returncode not in (None, 0)
    finally:
        own_postgres.resume()
