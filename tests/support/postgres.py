"""A throwaway PostgreSQL server for the test session.

Uses the Debian server binaries (installed by ``make test-deps``), runs
``initdb`` in a temporary directory on a free port bound to 127.0.0.1, with
trust authentication limited to loopback, and removes it all afterwards. As
root it runs the server as the ``postgres`` user, since PostgreSQL refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import psycopg.sql

from tests.support.net import free_port


def find_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int, extra_listen: str = "") -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.datadir = root / "data"
        self.user = "postgres"
        # Another address to listen on besides loopback (e.g. a test node's address,
        # for pods); clients arriving there need a password (see add_remote_login).
        self.extra_listen = extra_listen

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        self.resume()

    def resume(self) -> None:
        """Start the initialised server again (after ``stop``), on the same port and data."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses={self._listen} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )

    @property
    def _listen(self) -> str:
        return ",".join(filter(None, ["127.0.0.1", self.extra_listen]))

    def add_remote_login(self, user: str, password: str, cidr: str) -> None:
        """A password login for clients from ``cidr`` (scram-sha-256; trust stays loopback-only)."""
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    psycopg.sql.Identifier(user), psycopg.sql.Literal(password)
                )
            )
        with (self.datadir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all {user} {cidr} scram-sha-256\n")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "reload")

    def create_owned_database(self, name: str, owner: str) -> None:
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Identifier(owner)
                )
            )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``fast`` keeps what was committed (this server's settings
        trade durability for speed, so an ``immediate`` stop may lose the last commits)."""
        if (self.datadir / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"
            )

    def create_database(self) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def _dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={db}"


@contextmanager
def postgres_server(extra_listen: str = "") -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "PostgreSQL server binaries not found; run `make test-deps` to install them"
        )
    root = Path(tempfile.mkdtemp(prefix="bhiv-pg-"))
    root.chmod(0o755)
    server = PostgresServer(bindir, root, free_port(), extra_listen)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
