"""One write transaction at a time per SQLite database in a process, handed over at
once (not after SQLite's busy handler wakes up), and never left held."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bhiv.core.db import Database


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    with db.session() as s:
        s.execute(text("CREATE TABLE t (n INTEGER)"))
        s.commit()
    return db


def _gate_free(db: Database) -> bool:
    gate = db.writer_gate
    assert gate is not None
    if gate.acquire(timeout=0):
        gate.release()
        return True
    return False


@pytest.mark.parametrize("end", ["commit", "rollback", "close", "error"])
def test_every_way_a_write_transaction_ends_frees_the_gate(database: Database, end: str) -> None:
    session = database.sessionmaker(write=True)()
    session.execute(text("INSERT INTO t VALUES (1)"))
    assert not _gate_free(database)
    if end == "commit":
        session.commit()
    elif end == "rollback":
        session.rollback()
    elif end == "close":
        session.close()
    else:
        with pytest.raises(OperationalError):
            session.execute(text("INSERT INTO missing VALUES (1)"))
        session.rollback()
    assert _gate_free(database)
    session.close()
    assert _gate_free(database)


def test_reads_do_not_take_the_gate(database: Database) -> None:
    with database.session(write=True) as writer:
        writer.execute(text("INSERT INTO t VALUES (1)"))
        with database.session(write=False) as reader:
            assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 0
        writer.commit()


def test_a_waiting_writer_gets_its_turn_as_soon_as_the_first_commits(database: Database) -> None:
    first = database.sessionmaker(write=True)()
    first.execute(text("INSERT INTO t VALUES (1)"))
    waited: list[float] = []

    def second_writer() -> None:
        started = time.monotonic()
        with database.session(write=True) as s:
            s.execute(text("INSERT INTO t VALUES (2)"))
            waited.append(time.monotonic() - started)
            s.commit()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(0.3)
    assert not waited  # still waiting for the first writer
    first.commit()
    first.close()
    thread.join(5)
    assert waited and waited[0] >= 0.3
    with database.session(write=False) as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar() == 2


def test_a_writer_that_never_gets_its_turn_fails_like_a_locked_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'gate.db'}", write_timeout=0.2)
    holder = db.sessionmaker(write=True)()
    holder.execute(text("CREATE TABLE t (n INTEGER)"))
    with db.session(write=True) as s, pytest.raises(OperationalError, match="locked"):
        s.execute(text("INSERT INTO t VALUES (1)"))
    holder.rollback()
    holder.close()
    assert _gate_free(db)
