"""`bhiv provision-databases`, `bhiv backup` and `bhiv restore` against real databases,
with real services writing and reading over HTTP: data written, backed up, wiped (a
fresh, empty database as a reinstall leaves it), restored, and read back.

PostgreSQL runs on a server of this module's own, so the fixed database names
(``bhiv_logistics``, ``bhiv_crm``) cannot meet another test's."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from bhiv.cli.databases import database_name, password_variable
from tests.support.postgres import PostgresServer
from tests.support.servers import ServiceProcess, service_process

SERVICES = ("logistics", "crm")


def bhiv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BHIV_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "bhiv", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def create_records(servers: dict[str, ServiceProcess]) -> dict[str, str]:
    """One record per service; returns the path each is read back at."""
    tag = uuid.uuid4().hex[:8]
    item = (
        servers["logistics"]
        .client()
        .post(
            "/inventory",
            json={
                "sku": f"BK-{tag.upper()}",
                "name": "backed up",
                "quantity": 7,
                "unit_cost": "2.50",
            },
        )
    )
    assert item.status_code == 201, item.text
    customer = (
        servers["crm"]
        .client()
        .post("/customers", json={"name": tag, "email": f"{tag}@example.com"})
    )
    assert customer.status_code == 201, customer.text
    return {
        "logistics": f"/inventory/{item.json()['id']}",
        "crm": f"/customers/{customer.json()['id']}",
    }


def status_of(servers: dict[str, ServiceProcess], paths: dict[str, str]) -> dict[str, int]:
    return {name: servers[name].client().get(path).status_code for name, path in paths.items()}


# ---- PostgreSQL: one role and one database per service ---------------------------------
def admin_env(pg: PostgresServer) -> dict[str, str]:
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGDATABASE": "postgres",
    }


def provision(pg: PostgresServer, passwords: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**admin_env(pg), **{password_variable(s): p for s, p in passwords.items()}}
    return bhiv("provision-databases", *passwords, "--timeout", "30", env=env)


def service_url(pg: PostgresServer, service: str, password: str) -> str:
    name = database_name(service)
    return f"postgresql+psycopg://{name}:{password}@127.0.0.1:{pg.port}/{name}"


@pytest.mark.postgres
def test_provisioning_is_idempotent_and_isolates_services(own_postgres: PostgresServer) -> None:
    passwords = {s: secrets.token_urlsafe(16) for s in SERVICES}
    first = provision(own_postgres, passwords)
    assert first.returncode == 0, first.stderr
    again = provision(own_postgres, passwords)  # an upgrade runs it again
    assert again.returncode == 0, again.stderr
    assert "database bhiv_crm ready for crm" in again.stderr
    # One role per service, owning its database; PUBLIC may not connect to it.
    with psycopg.connect(
        f"host=127.0.0.1 port={own_postgres.port} user={own_postgres.user} dbname=postgres"
    ) as conn:
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database"
                " WHERE datname LIKE 'bhiv_%'"
            ).fetchall()
        )
        assert owners == {"bhiv_logistics": "bhiv_logistics", "bhiv_crm": "bhiv_crm"}
        superusers = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'bhiv_%'"
            " AND (rolsuper OR rolcreatedb OR rolcreaterole)"
        ).fetchall()
        assert superusers == []
    # Logistics' role cannot even open CRM's database.
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(
            f"host=127.0.0.1 port={own_postgres.port} user=bhiv_logistics dbname=bhiv_crm"
        ).close()


@pytest.mark.postgres
def test_provisioning_refuses_missing_passwords_and_unknown_services(
    own_postgres: PostgresServer,
) -> None:
    missing = bhiv("provision-databases", "crm", env=admin_env(own_postgres))
    assert missing.returncode == 2 and "BHIV_DATABASE_PASSWORD_CRM is not set" in missing.stderr
    unknown = bhiv(
        "provision-databases",
        "gateway",
        env={**admin_env(own_postgres), "BHIV_DATABASE_PASSWORD_GATEWAY": "x"},
    )
    assert (
        unknown.returncode == 2 and "'gateway' is not a service with a database" in unknown.stderr
    )


@pytest.mark.postgres
def test_backup_wipe_restore_on_postgres(own_postgres: PostgresServer, tmp_path: Path) -> None:
    passwords = {s: secrets.token_urlsafe(16) for s in SERVICES}
    assert provision(own_postgres, passwords).returncode == 0
    servers = {
        s: service_process(s, tmp_path, service_url(own_postgres, s, passwords[s])).start()
        for s in SERVICES
    }
    admin_url = f"postgresql://{own_postgres.user}@127.0.0.1:{own_postgres.port}/postgres"
    try:
        paths = create_records(servers)
        backup = bhiv("backup", str(tmp_path / "backup"), "--server", admin_url, *_services())
        assert backup.returncode == 0, backup.stderr
        assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
            "backup.json",
            "crm.dump",
            "logistics.dump",
        ]
        assert oct((tmp_path / "backup" / "crm.dump").stat().st_mode & 0o777) == "0o600"
        # Wipe: the databases dropped and made anew, as a fresh install leaves them.
        for s in servers.values():
            s.stop()
        with psycopg.connect(
            f"host=127.0.0.1 port={own_postgres.port} user={own_postgres.user} dbname=postgres",
            autocommit=True,
        ) as conn:
            for name in SERVICES:
                conn.execute(f'DROP DATABASE "{database_name(name)}" WITH (FORCE)')
        assert provision(own_postgres, passwords).returncode == 0
        for s in servers.values():
            s.start()
        assert status_of(servers, paths) == {"logistics": 404, "crm": 404}
        # Restore while the services run, through each service's own role this time.
        restore = bhiv(
            "restore",
            str(tmp_path / "backup"),
            *(f"--database={s}={service_url(own_postgres, s, passwords[s])}" for s in SERVICES),
        )
        assert restore.returncode == 0, restore.stderr
        assert status_of(servers, paths) == {"logistics": 200, "crm": 200}
        assert servers["logistics"].client().get(paths["logistics"]).json()["quantity"] == 7
        # The restored tables belong to the service's role: it writes on as before.
        create_records(servers)
        # And restoring as the admin sets each database's role (SET ROLE), not the admin's.
        again = bhiv("restore", str(tmp_path / "backup"), "--server", admin_url)
        assert again.returncode == 0, again.stderr
        create_records(servers)
    finally:
        for s in servers.values():
            s.stop()
    # Nothing of the passwords in what the commands print.
    for output in (backup.stdout + backup.stderr, restore.stdout + restore.stderr):
        assert not any(p in output for p in passwords.values())


def _services() -> list[str]:
    return [f"--service={s}" for s in SERVICES]


@pytest.mark.postgres
def test_backup_refuses_a_bad_target(own_postgres: PostgresServer, tmp_path: Path) -> None:
    # A server that does not hold the databases: the error names the service, not a password.
    url = f"postgresql://nobody:s3cret-pw@127.0.0.1:{own_postgres.port}/postgres"
    failed = bhiv("backup", str(tmp_path / "b"), "--server", url, "--service", "crm")
    assert failed.returncode == 1 and "crm: pg_dump failed" in failed.stderr
    assert "s3cret-pw" not in failed.stderr
    assert not (tmp_path / "b" / "backup.json").exists()
    nothing = bhiv("restore", str(tmp_path / "nowhere"))
    assert nothing.returncode == 1 and "holds no complete backup" in nothing.stderr


# ---- SQLite: the files in the data directory -------------------------------------------
def test_backup_wipe_restore_on_sqlite(tmp_path: Path) -> None:
    servers = {s: service_process(s, tmp_path).start() for s in SERVICES}  # one data dir
    data_dir = servers["crm"].data_dir
    try:
        paths = create_records(servers)
        backup = bhiv("backup", str(tmp_path / "backup"), "--data-dir", str(data_dir), *_services())
        assert backup.returncode == 0, backup.stderr
        for s in servers.values():
            s.stop()
        for name in SERVICES:
            for file in data_dir.glob(f"{name}.db*"):
                file.unlink()
        for s in servers.values():
            s.start()
        assert status_of(servers, paths) == {"logistics": 404, "crm": 404}
        # Online: the services keep running while their files are replaced.
        restore = bhiv("restore", str(tmp_path / "backup"), env={"BHIV_DATA_DIR": str(data_dir)})
        assert restore.returncode == 0, restore.stderr
        assert status_of(servers, paths) == {"logistics": 200, "crm": 200}
        create_records(servers)
        # A SQLite backup never goes into PostgreSQL by mistake.
        mismatch = bhiv(
            "restore",
            str(tmp_path / "backup"),
            "--database=crm=postgresql://u@127.0.0.1:1/x",
            "--service=crm",
        )
        assert mismatch.returncode == 1
        assert (
            "crm: the backup holds a sqlite database, the target is postgresql" in mismatch.stderr
        )
    finally:
        for s in servers.values():
            s.stop()
