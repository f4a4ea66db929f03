"""``bhiv backup`` and ``bhiv restore``: every service's database to a directory and back.

A PostgreSQL database is dumped with ``pg_dump --format=custom`` and restored with
``pg_restore --clean --if-exists --single-transaction``: a restore replaces what the
backup holds, all at once or not at all. A SQLite file is copied with SQLite's online
backup API, so a running service may keep using it meanwhile, both ways.

Where each service's database is, in order of precedence:

- ``--database SERVICE=URL``: that URL (an external PostgreSQL, a CloudNativePG app
  Secret's URI, a SQLite file);
- ``--server URL``: a PostgreSQL server holding one database per service, named as
  ``bhiv provision-databases`` names them (the Helm chart's bundled PostgreSQL); the
  URL's user must be able to read every one of them (the ``postgres`` superuser) and
  a restore creates the objects as each database's own role (``SET ROLE``);
- otherwise the service's own settings, as ``bhiv migrate`` finds them
  (``BHIV_DATABASE_URL``, else the SQLite file in ``BHIV_DATA_DIR``).

A password may be left out of a URL: libpq then reads ``PGPASSWORD`` or
``~/.pgpass``. Passwords never go on the ``pg_dump``/``pg_restore`` command lines.
The directory gets ``backup.json`` (written last: a backup without it is incomplete)
and one file per service, readable by the owner only.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from bhiv import __version__
from bhiv.cli.databases import database_name

MANIFEST = "backup.json"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why (and holds no secret)."""


@dataclass(frozen=True)
class BackupTarget:
    """Where one service's database is."""

    service: str
    url: URL
    # The role a restore creates objects as, when connected as another (an admin).
    role: str | None = None

    @property
    def kind(self) -> str:
        return "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"


def resolve_targets(
    services: list[str],
    *,
    server: str | None = None,
    databases: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> list[BackupTarget]:
    """Each service's database, by the precedence in the module docstring."""
    from bhiv.cli.main import load_spec

    databases = databases or {}
    targets = []
    for service in services:
        if service in databases:
            targets.append(BackupTarget(service, make_url(databases[service])))
        elif server:
            name = database_name(service)
            targets.append(BackupTarget(service, make_url(server).set(database=name), role=name))
        else:
            overrides = {"data_dir": data_dir} if data_dir else {}
            settings = load_spec(service).settings_class(**overrides)
            targets.append(BackupTarget(service, make_url(settings.sqlalchemy_url())))
    return targets


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    uri = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def _run_pg(tool: str, args: list[str], url: URL, service: str) -> None:
    binary = shutil.which(tool)
    if binary is None:
        raise BackupError(
            f"{tool} not found: install the PostgreSQL client "
            "(its major version at least the server's)"
        )
    uri, env = _libpq(url)
    result = subprocess.run(  # noqa: S603 - a fixed tool, arguments built here
        [binary, *args, f"--dbname={uri}"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # libpq and pg_dump name host, database and the failure; never the password.
        raise BackupError(f"{service}: {tool} failed: {result.stderr.strip()[-2000:]}")


def _sqlite_path(target: BackupTarget) -> Path:
    if not target.url.database or target.url.database == ":memory:":
        raise BackupError(f"{target.service}: {target.url.render_as_string()} is not a SQLite file")
    return Path(target.url.database)


def _sqlite_copy(source: Path, destination: Path) -> None:
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(destination)) as dst:
        src.backup(dst)


def backup(targets: list[BackupTarget], directory: Path) -> dict[str, object]:
    """Dump every target into ``directory`` (new or empty); returns the manifest."""
    if (directory / MANIFEST).exists():
        raise BackupError(f"{directory} already holds a backup; choose a new directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries: dict[str, dict[str, str]] = {}
    for target in targets:
        if target.kind == "sqlite":
            source = _sqlite_path(target)
            if not source.exists():
                raise BackupError(f"{target.service}: no database file at {source}")
            file = f"{target.service}.sqlite"
            (directory / file).touch(mode=0o600)
            _sqlite_copy(source, directory / file)
        else:
            file = f"{target.service}.dump"
            (directory / file).touch(mode=0o600)
            _run_pg(
                "pg_dump",
                ["--format=custom", f"--file={directory / file}"],
                target.url,
                target.service,
            )
        entries[target.service] = {"kind": target.kind, "file": file}
    manifest: dict[str, object] = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bhiv_version": __version__,
        "services": entries,
    }
    partial = directory / f".{MANIFEST}.tmp"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.chmod(0o600)
    partial.replace(directory / MANIFEST)
    return manifest


def read_manifest(directory: Path) -> dict[str, dict[str, str]]:
    """The services a backup holds: ``{service: {"kind": ..., "file": ...}}``."""
    path = directory / MANIFEST
    if not path.exists():
        raise BackupError(f"{directory} holds no complete backup (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format')!r}")
    return dict(manifest["services"])


def restore(targets: list[BackupTarget], directory: Path) -> None:
    """Put each target's backed-up database back in place of what it holds now."""
    entries = read_manifest(directory)
    missing = [t.service for t in targets if t.service not in entries]
    if missing:
        raise BackupError(f"the backup in {directory} holds no database for {', '.join(missing)}")
    # Every check first, so a mismatch never leaves some services restored and others not.
    for target in targets:
        kind = entries[target.service]["kind"]
        if kind != target.kind:
            raise BackupError(
                f"{target.service}: the backup holds a {kind} database, the target is {target.kind}"
            )
        if not (directory / entries[target.service]["file"]).exists():
            raise BackupError(
                f"{target.service}: {entries[target.service]['file']} is missing from {directory}"
            )
    for target in targets:
        file = directory / entries[target.service]["file"]
        if target.kind == "sqlite":
            destination = _sqlite_path(target)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _sqlite_copy(file, destination)
        else:
            args = [
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
            ]
            if target.role:
                args.append(f"--role={target.role}")
            _run_pg("pg_restore", [*args, str(file)], target.url, target.service)
