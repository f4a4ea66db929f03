"""Replicas starting at once against one fresh PostgreSQL database: the
migrations run once (an advisory lock in bhiv.core.migrations serialises them)
and every replica ends up serving."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from alembic.script import ScriptDirectory

from bhiv.core.migrations import alembic_config, lock_key, version_table
from tests.support.postgres import PostgresServer
from tests.support.servers import ServiceProcess, service_process

pytestmark = pytest.mark.postgres

SERVICE = "logistics"
REPLICAS = 3


def _waiting_for_lock(dsn: str, key: int) -> int:
    """Sessions queued on the advisory lock ``key`` (a bigint key: objid holds it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = (%s::bigint & 4294967295)::oid",
            (key,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_three_replicas_on_a_fresh_database_migrate_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    key = lock_key(SERVICE)
    replicas: list[ServiceProcess] = []
    for i in range(REPLICAS):
        (tmp_path / f"replica-{i}").mkdir()
        replicas.append(service_process(SERVICE, tmp_path / f"replica-{i}", url))
    # Hold the migration lock, so every replica reaches it before any migrates:
    # then release it and let them race as pods scheduled together would.
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            for replica in replicas:
                replica.launch()
            deadline = time.monotonic() + 90
            while _waiting_for_lock(dsn, key) < REPLICAS:
                assert time.monotonic() < deadline, "the replicas never all waited for the lock"
                for replica in replicas:
                    assert replica.process is not None and replica.process.poll() is None, (
                        replica.log()
                    )
                time.sleep(0.2)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
    try:
        for replica in replicas:
            replica.wait_ready()
            assert replica.client().get("/health/ready").status_code == 200

        # One run: each revision applied by exactly one replica, and recorded once.
        scripts = ScriptDirectory.from_config(alembic_config(SERVICE, f"bhiv.{SERVICE}:migrations"))
        revisions = [r.revision for r in scripts.walk_revisions()]
        runs = [
            line
            for replica in replicas
            for line in replica.log().splitlines()
            if "Running upgrade" in line
        ]
        assert len(runs) == len(revisions), "\n".join(runs)
        for revision in revisions:
            assert sum(f"-> {revision}," in line for line in runs) == 1, revision
        with psycopg.connect(dsn) as conn:
            query = psycopg.sql.SQL("SELECT version_num FROM {}").format(
                psycopg.sql.Identifier(version_table(SERVICE))
            )
            rows = conn.execute(query).fetchall()
        assert rows == [(scripts.get_current_head(),)]
    finally:
        for replica in replicas:
            replica.stop()
