"""``bhiv provision-databases``: one PostgreSQL role and one database per service.

The Helm chart's bundled PostgreSQL runs it as a post-install/post-upgrade hook Job,
so a service enabled by an upgrade gets its database too. For each service it
creates (or, when it exists, updates the password of) a login role
``bhiv_<service>``, creates the database of the same name owned by that role, and
revokes ``CONNECT`` from ``PUBLIC`` on it: no service role can open another
service's database, let alone read its tables. Running it again changes nothing
but the passwords, which it sets to the ones given (the chart's Secret is the
source of truth).

The server is the one the libpq environment names (``PGHOST``, ``PGPORT``,
``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``); a role allowed to create roles and
databases (the chart uses the ``postgres`` superuser). Each service's password
comes from ``BHIV_DATABASE_PASSWORD_<SERVICE>`` (upper case, ``-`` as ``_``), so
no password is ever on a command line.

Exit codes: 0 done; 1 the server did not answer within ``--timeout``; 2 usage
error (unknown service, missing password variable).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from bhiv import catalog

if TYPE_CHECKING:  # imported where used: every `bhiv` command imports this module
    import psycopg

err = Console(stderr=True, highlight=False, soft_wrap=True)


def database_name(service: str) -> str:
    """The role and database of ``service`` on a shared server (``bhiv_llm_query``)."""
    return "bhiv_" + service.replace("-", "_")


def password_variable(service: str) -> str:
    return "BHIV_DATABASE_PASSWORD_" + service.upper().replace("-", "_")


def provision(conn: psycopg.Connection, service: str, password: str) -> None:
    """Create or update ``service``'s role and database; ``conn`` is in autocommit
    mode (CREATE DATABASE cannot run in a transaction)."""
    from psycopg import sql

    name = database_name(service)
    ident = sql.Identifier(name)
    role_exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = sql.SQL("ALTER ROLE" if role_exists else "CREATE ROLE")
    conn.execute(
        sql.SQL("{} {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            verb, ident, sql.Literal(password)
        )
    )
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
    # PUBLIC may connect to a new database by default: only its owner (and
    # superusers) may here.
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))


def connect_when_up(timeout: float) -> psycopg.Connection:
    """A connection to the libpq environment's server, retried until ``timeout``:
    the hook starts while the server may still be initialising."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect("", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                # The libpq message names host and port and the reason, never the password.
                err.print(
                    f"[red]error:[/] PostgreSQL did not answer within {timeout:g}s: {exc}".rstrip()
                )
                raise typer.Exit(1) from None
            time.sleep(2)


def provision_databases(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="Services to provision (default: every one with a database)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the server to answer.", min=1)
    ] = 300,
) -> None:
    """Create one role and one database per service on a shared PostgreSQL (idempotent)."""
    from bhiv.cli.main import load_spec

    names = services or [name for name in catalog.SERVICES if load_spec(name).has_database]
    passwords: dict[str, str] = {}
    for name in names:
        if name not in catalog.SERVICES or not load_spec(name).has_database:
            err.print(f"[red]error:[/] {name!r} is not a service with a database")
            raise typer.Exit(2)
        password = os.environ.get(password_variable(name), "")
        if not password:
            err.print(
                f"[red]error:[/] {password_variable(name)} is not set: "
                f"the password of {name}'s role"
            )
            raise typer.Exit(2)
        passwords[name] = password
    with connect_when_up(timeout) as conn:
        for name, password in passwords.items():
            provision(conn, name, password)
            err.print(f"database {database_name(name)} ready for {name}")
