"""Local data is private to its owner: the data directory 0700, SQLite files (with
their WAL and shared memory) and local secrets 0600, whatever the umask, and
files or directories left more open by an older version are tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bhiv.core.db import make_engine
from bhiv.core.private_files import private_dir, private_file
from bhiv.core.settings import load_or_create_local_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default, which leaves new files world-readable
    try:
        yield
    finally:
        os.umask(previous)


def test_directories_and_files(tmp_path: Path) -> None:
    new = private_dir(tmp_path / "a" / "data")
    assert mode(new) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    assert mode(private_dir(old)) == 0o700
    loose = old / "loose.db"
    loose.write_text("x")
    loose.chmod(0o644)
    assert (
        mode(private_file(loose)) == 0o600 and loose.read_text() == "x"
    )  # tightened, not truncated


def test_local_secrets(tmp_path: Path) -> None:
    secret_path = tmp_path / "fresh" / "jwt-secret"
    secret = load_or_create_local_secret(secret_path)
    assert mode(secret_path) == 0o600 and mode(secret_path.parent) == 0o700
    secret_path.chmod(0o644)
    assert load_or_create_local_secret(secret_path) == secret and mode(secret_path) == 0o600


def test_sqlite_database_and_its_wal(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "svc.db"
    engine = make_engine(f"sqlite:///{db_path}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        files = sorted(db_path.parent.iterdir())
        assert {p.name for p in files} >= {"svc.db", "svc.db-wal", "svc.db-shm"}
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert mode(db_path.parent) == 0o700
    finally:
        engine.dispose()


def test_a_shared_temporary_directory_keeps_its_mode(tmp_path: Path) -> None:
    """A database file put straight into /tmp (BHIV_DATA_DIR=/tmp, or a SQLite URL
    there) is made 0600, but /tmp itself stays 1777: closing it would break every
    other user and program on the machine."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    assert mode(private_file(shared / "crm.db")) == 0o600
    assert mode(private_dir(shared)) == 0o1777
    assert mode(shared) == 0o1777
