"""Alembic migrations, one history per service, applied programmatically.

Each service keeps its scripts in its own package (``bhiv.<service>:migrations``)
and its own version table (``alembic_version_<service>``), so even services
sharing a database never see each other's history. On PostgreSQL an advisory
lock serialises replicas that start at the same moment; on SQLite the
``BEGIN IMMEDIATE`` transaction does the same.
"""

from __future__ import annotations

import zlib
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

from bhiv.core.db import UTCDateTime, make_engine


def version_table(service: str) -> str:
    return f"alembic_version_{service.replace('-', '_')}"


def alembic_config(service: str, script_location: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("version_table", version_table(service))
    return cfg


def lock_key(service: str) -> int:
    # A stable signed 32-bit key per service for pg_advisory_xact_lock.
    return zlib.crc32(f"bhiv-migrate:{service}".encode()) - 2**31


def upgrade(service: str, script_location: str, url: str, revision: str = "head") -> None:
    engine = make_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            engine = engine.execution_options(sqlite_begin="IMMEDIATE")
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_key(service),))
            cfg = alembic_config(service, script_location)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def revision(service: str, script_location: str, url: str, message: str) -> None:
    """Autogenerate a new migration from the models against an up-to-date database."""
    upgrade(service, script_location, url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(service, script_location)
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=message, autogenerate=True)
    finally:
        engine.dispose()


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations use plain SQLAlchemy types, so they never import service code.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_env(context: Any, metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `bhiv migrate`, which provides the connection")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=context.config.get_main_option("version_table"),
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
