"""Database access: SQLAlchemy 2.x engines, sessions and shared column types.

SQLite (the default, one file per service) runs in WAL mode so readers never
block the writer. Transactions that write start with ``BEGIN IMMEDIATE``: they
take the write lock up front instead of failing with "database is locked" when
a deferred transaction tries to upgrade. Read-only requests keep deferred
transactions and run concurrently. Within a process, writers queue on a lock of
their own (``SQLiteWriterGate``) rather than in SQLite's busy handler. PostgreSQL
needs none of these tricks.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any, cast

import anyio
import anyio.to_thread
import sqlalchemy
from fastapi import Depends, Request
from sqlalchemy import DateTime, Engine, Enum, MetaData, event, text
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from bhiv.core.roles import SAFE_METHODS

# Stable constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL is durable across application crashes in WAL mode; only a power
    # loss can roll back the last transactions.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-8000",  # KiB per connection
)

# Seconds a new PostgreSQL connection may take (libpq's connect_timeout), unless the URL says.
PG_CONNECT_TIMEOUT = 5


def new_metadata() -> MetaData:
    """Metadata for one service's declarative base (``metadata = new_metadata()``).

    Each service owns its metadata, so no service's migrations can see, let
    alone touch, another service's tables.
    """
    return MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched: the guarded-claim idiom's answer.

    ``Session.execute`` is typed as returning ``Result``; for DML it is a
    ``CursorResult``, which carries ``rowcount``.
    """
    return cast(CursorResult[Any], result).rowcount


def string_enum(cls: type[enum.Enum], name: str, *, length: int = 20) -> Enum:
    """A column type for a Python enum, stored as its values in plain strings with a CHECK.

    Portable across SQLite and PostgreSQL, and a new member needs no ``ALTER TYPE``.
    """
    return Enum(
        cls,
        name=name,
        native_enum=False,
        validate_strings=True,
        length=length,
        # SQLAlchemy stores member names by default; values are what the API speaks.
        values_callable=lambda members: [m.value for m in members],
    )


class Timestamps:
    """Mixin for tables whose rows record when they were created and last changed.

    ``updated_at`` is set by whoever changes the row (``crud.apply_patch`` does).
    """

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SQLiteWriterGate:
    """One write transaction at a time per SQLite database in this process.

    SQLite has one writer; the others wait in its busy handler, which polls with
    growing sleeps (1, 2, 5, 10 … 100 ms), so under contention a writer often sleeps
    long after the lock came free, and an unlucky one loses every race: at saturation
    write p99 was 1.0–1.3 s with requests timing out. Queued here, the next writer
    starts as soon as the previous transaction ends (p99 0.18–0.23 s, no timeouts;
    bench/logistics_throughput.py). SQLite's own locking still guards against other
    processes (migrations, a second server).

    Taken just before ``BEGIN IMMEDIATE``; given back when the connection's
    transaction ends (commit, rollback — which closing a session does — or a failed
    BEGIN), and at the latest when the connection returns to the pool. A plain Lock:
    a session may be closed on another thread than the one that began it.
    """

    _HELD = "bhiv_holds_writer_gate"

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    def acquire(self, timeout: float) -> bool:
        if timeout > 0:
            return self._lock.acquire(timeout=timeout)
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()

    def enter(self, info: dict[str, Any]) -> None:
        if not self.acquire(self._timeout):
            waited = TimeoutError(f"database is locked (waited {self._timeout:g}s to write)")
            raise OperationalError("BEGIN IMMEDIATE", None, waited)
        info[self._HELD] = True

    def leave(self, info: dict[str, Any]) -> None:
        if info.pop(self._HELD, False):
            self.release()


def make_engine(
    url: str,
    pool_size: int = 10,
    max_connections: int = 100,
    writer_gate: SQLiteWriterGate | None = None,
) -> Engine:
    """An engine whose pool never makes a request wait for a connection.

    A request holds its session's connection until FastAPI has serialised the
    response (which, for sync handlers, needs a worker thread again). A pool
    smaller than the number of requests in flight could therefore deadlock:
    threads waiting for connections held by requests waiting for threads. So
    the pool may grow to ``max_connections``, the server's concurrency limit.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a pod's pooled connections survive a database failover. A
        # connect timeout: an unreachable server fails a request (503) instead of
        # holding it until the kernel gives up on the TCP handshake.
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT}
        if "connect_timeout" in parsed.query:
            connect_args = {}
        # Looked up on the module: tracing's SQLAlchemy instrumentation patches it there.
        return sqlalchemy.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max(0, max_connections - pool_size),
            connect_args=connect_args,
        )

    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        from bhiv.core.private_files import private_file

        # Created 0600 before SQLite opens it: its journal, WAL and shared-memory
        # files take the database file's mode. A path that cannot be a file is
        # left for SQLite to report (readiness says the database is unreachable).
        with suppress(IsADirectoryError, NotADirectoryError, FileNotFoundError):
            private_file(Path(parsed.database))
    engine = sqlalchemy.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        # Connections up to pool_size are kept open: opening a SQLite
        # connection re-runs the PRAGMAs, which costs more than most queries.
        pool_size=pool_size,
        max_overflow=max(0, max_connections - pool_size),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode == "IMMEDIATE" and writer_gate is not None:
            writer_gate.enter(conn.info)
            try:
                conn.exec_driver_sql(f"BEGIN {mode}")
            except BaseException:
                writer_gate.leave(conn.info)
                raise
        else:
            conn.exec_driver_sql(f"BEGIN {mode}")

    if writer_gate is not None:
        # The "commit" event comes just before SQLite's COMMIT: the next writer may
        # meet the lock for the few microseconds it takes and wait 1 ms in the busy
        # handler, a small price for never holding the gate past the transaction.
        for name in ("commit", "rollback"):
            event.listen(engine, name, lambda conn: writer_gate.leave(conn.info))
        event.listen(engine.pool, "checkin", lambda _dbapi, record: writer_gate.leave(record.info))

    return engine


class Database:
    """One service's engine and session factories (read and write)."""

    def __init__(
        self, url: str, pool_size: int = 10, max_connections: int = 100, write_timeout: float = 30.0
    ) -> None:
        is_sqlite = make_url(url).get_backend_name() == "sqlite"
        # Waits as long as SQLite's busy_timeout would have.
        self.writer_gate = SQLiteWriterGate(write_timeout) if is_sqlite else None
        self.engine = make_engine(url, pool_size, max_connections, self.writer_gate)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.is_sqlite
            else self.engine
        )
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    def sessionmaker(self, *, write: bool) -> sessionmaker[Session]:
        return self._write if write else self._read

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        with self.sessionmaker(write=write)() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


# Closing a PostgreSQL session (a rollback round trip, returning the
# connection) runs on threads of its own: if it waited for the handlers'
# threads, handlers waiting for a pooled connection could deadlock against
# sessions waiting to give theirs back. It runs after the response is sent, so
# too few of these threads let finished requests pile up until the server's
# concurrency limit answers 503.
_CLOSE_LIMITER = anyio.CapacityLimiter(16)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """FastAPI dependency: a session whose transaction mode follows the HTTP method.

    Domain code commits explicitly; anything not committed is rolled back when
    the request ends, so a failed request leaves nothing half-written. A write
    handler's commit is its last database action: a query after it would open a
    new ``BEGIN IMMEDIATE`` transaction and hold SQLite's write lock until the
    response is sent. Creating the session does no I/O, so it happens on the
    event loop; so does closing a SQLite session, a local rollback that takes
    microseconds, far less than a trip to a thread.
    """
    db: Database = request.app.state.db
    session = db.sessionmaker(write=request.method not in SAFE_METHODS)()
    try:
        yield session
    finally:
        if db.is_sqlite:
            session.close()
        else:
            await anyio.to_thread.run_sync(session.close, limiter=_CLOSE_LIMITER)


# A handler's session: ``def handler(session: SessionDep) -> ...``.
SessionDep = Annotated[Session, Depends(get_session)]
