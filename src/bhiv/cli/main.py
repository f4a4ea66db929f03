"""The ``bhiv`` command: run services, the whole platform, migrations, tokens."""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bhiv import __version__, catalog
from bhiv.cli.databases import provision_databases
from bhiv.cli.modules import modules_command
from bhiv.cli.wait import wait_modules

app = typer.Typer(
    name="bhiv",
    help="BHIV Core: run the platform's services locally or as a container would.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)
err = Console(stderr=True)
# `serve --after`: how long a service waits for the services it starts after.
AFTER_TIMEOUT_SECONDS = 300.0


def load_spec(service: str) -> Any:
    entry = _entry(service)
    module, _, attr = entry.app_factory.partition(":")
    return importlib.import_module(module).SPEC


def _entry(service: str) -> catalog.ServiceEntry:
    try:
        return catalog.get(service)
    except KeyError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}")
        raise typer.Exit(2) from None


ServiceArg = Annotated[
    str, typer.Argument(help=f"One of: {', '.join(catalog.SERVICES)}.", show_default=False)
]


@app.command()
def serve(
    service: ServiceArg,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: BHIV_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: BHIV_PORT or the service's own).")
    ] = None,
    after: Annotated[
        list[str] | None,
        typer.Option(
            "--after",
            help="A base URL (repeatable) whose /health/ready must answer 200 before this "
            "service starts serving; its app is built meanwhile (bhiv up's startup order).",
        ),
    ] = None,
) -> None:
    """Run one service in the foreground, as a container runs it."""
    from bhiv.core import server
    from bhiv.core.logging import configure_logging

    spec = load_spec(service)
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = spec.settings_class(**overrides)
    configure_logging(spec.name, settings.log_level, settings.log_format)
    module, _, factory = _entry(service).app_factory.partition(":")
    from bhiv.core.settings import MissingSharedSecret
    from bhiv.core.tracing import TracingConfigError

    try:
        application = getattr(importlib.import_module(module), factory)(settings)
    except (MissingSharedSecret, TracingConfigError) as exc:
        err.print(f"[red]error:[/] {spec.name} cannot start: {exc}")
        raise typer.Exit(78) from None  # EX_CONFIG: the pod's configuration, not the code
    if after:
        from bhiv.cli.up import wait_until_ready
        from bhiv.core.app import prepare

        prepare(application)  # migrations and the like need no other service: done now
        missing = wait_until_ready(after, timeout=AFTER_TIMEOUT_SECONDS)
        if missing is not None:
            err.print(f"[red]error:[/] {missing} was not ready after {AFTER_TIMEOUT_SECONDS:.0f} s")
            raise typer.Exit(1)
    server.run(application, settings)


@app.command()
def migrate(
    service: Annotated[str, typer.Argument(help="A service name, or 'all'.")] = "all",
    revision: Annotated[
        str | None,
        typer.Option("--revision", "-m", help="Autogenerate a new migration with this message."),
    ] = None,
) -> None:
    """Apply each service's database migrations (or autogenerate a new one)."""
    from bhiv.core import migrations

    names = list(catalog.SERVICES) if service == "all" else [_entry(service).name]
    for name in names:
        spec = load_spec(name)
        if not spec.has_database:
            err.print(f"{name} has no database")
            continue
        url = spec.settings_class().sqlalchemy_url()
        if revision:
            migrations.revision(name, spec.migrations, url, revision)
            err.print(f"[green]new migration[/] for {name}")
        else:
            migrations.upgrade(name, spec.migrations, url)
            err.print(f"[green]migrated[/] {name}")


@app.command()
def token(
    role: Annotated[str, typer.Option(help="admin, editor or viewer.")] = "admin",
    subject: Annotated[str, typer.Option(help="The token's subject (sub).")] = "dev",
    ttl: Annotated[
        int, typer.Option(help="Lifetime in seconds.", min=1, max=30 * 24 * 3600)
    ] = 3600,
    tenant: Annotated[str | None, typer.Option(help="Tenant claim, if any.")] = None,
    private_key: Annotated[
        Path | None,
        typer.Option(help="PEM private key: sign RS256 instead of HS256 with the shared secret."),
    ] = None,
) -> None:
    """Mint a JWT with the local signing secret; the token is alone on the last line."""
    from bhiv.core.auth import mint_token
    from bhiv.core.roles import ROLE_PERMISSIONS
    from bhiv.core.settings import ServiceSettings

    if role not in ROLE_PERMISSIONS:
        err.print(
            f"[red]error:[/] unknown role {role!r}; choose one of {', '.join(ROLE_PERMISSIONS)}"
        )
        raise typer.Exit(2)
    settings = ServiceSettings()
    key = private_key.read_text() if private_key else None
    err.print(f"JWT for subject={subject} role={role}, valid {ttl}s:")
    print(
        mint_token(
            settings, subject=subject, roles=[role], ttl_seconds=ttl, tenant=tenant, private_key=key
        )
    )


@app.command("reencrypt-credentials")
def reencrypt_credentials() -> None:
    """Re-encrypt the integrations service's stored secrets with the first key of
    BHIV_CREDENTIALS_KEY, so an old key can be dropped (run where the service runs:
    same BHIV_DATABASE_URL and BHIV_CREDENTIALS_KEY, e.g. `kubectl exec`)."""
    from bhiv.core.db import Database
    from bhiv.integrations.crypto import SecretBox, UnreadableSecret
    from bhiv.integrations.reencrypt import reencrypt_all
    from bhiv.integrations.settings import IntegrationsSettings

    settings = IntegrationsSettings()
    keys = settings.credential_secrets() if settings.credentials_key is not None else []
    if not keys:
        err.print("[red]error:[/] set BHIV_CREDENTIALS_KEY: the new key first, then the old")
        raise typer.Exit(2)
    db = Database(settings.sqlalchemy_url())
    try:
        counts = reencrypt_all(db, SecretBox(keys))
    except UnreadableSecret as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    for table, n in counts.items():
        err.print(f"re-encrypted {n} secret(s) in {table}")
    err.print("[green]done:[/] all stored secrets use the first key; drop the older ones")


@app.command("api-key")
def api_key(
    name: Annotated[str, typer.Option(help="Who holds the key.")],
    role: Annotated[str, typer.Option(help="admin, editor or viewer.")] = "viewer",
) -> None:
    """Generate an API key: the key for the client, the entry for BHIV_API_KEYS."""
    import json

    from bhiv.core.auth import hash_api_key
    from bhiv.core.roles import ROLE_PERMISSIONS

    if role not in ROLE_PERMISSIONS:
        err.print(
            f"[red]error:[/] unknown role {role!r}; choose one of {', '.join(ROLE_PERMISSIONS)}"
        )
        raise typer.Exit(2)
    key = "bhiv_" + secrets.token_urlsafe(32)
    entry = {"name": name, "role": role, "sha256": hash_api_key(key)}
    err.print(
        "Add this entry to BHIV_API_KEYS (a JSON list); give the key on the last line to the client:"
    )
    err.print(json.dumps(entry))
    print(key)


@app.command()
def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where SQLite files and the local JWT secret live (default: BHIV_DATA_DIR)."
        ),
    ] = None,
    port_offset: Annotated[
        int, typer.Option(help="Add this to every service's port.", min=0, max=50000)
    ] = 0,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Start only these services (and nothing they wait for)."),
    ] = None,
) -> None:
    """Run every service locally in the seed's startup order; Ctrl-C stops them all."""
    from bhiv.cli.up import run_platform

    raise typer.Exit(run_platform(data_dir=data_dir, port_offset=port_offset, only=only))


@app.command("operator")
def operator_command(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    peering: Annotated[
        str | None,
        typer.Option(
            help="Kopf peering name, so two operator pods never act at once (needs the peering CRDs)."
        ),
    ] = None,
    priority: Annotated[
        int, typer.Option(help="Peering priority; the highest active operator acts.")
    ] = 0,
    liveness_port: Annotated[int, typer.Option(help="Port of /healthz (0: off).")] = 8080,
    metrics_port: Annotated[int, typer.Option(help="Port of Prometheus /metrics (0: off).")] = 9090,
    kubeconfig: Annotated[
        str | None, typer.Option(help="Kubeconfig (default: in-cluster, then $KUBECONFIG).")
    ] = None,
    cluster_domain: Annotated[
        str, typer.Option(help="DNS domain of the cluster, for status.url.")
    ] = "cluster.local",
    listen_host: Annotated[
        str, typer.Option(help="Interface of the liveness and metrics endpoints.")
    ] = "0.0.0.0",  # noqa: S104
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each handler call.")
    ] = False,
    allowed_image: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-image",
            help="Registry or repository prefix a BhivModule's image must start with, e.g. "
            "'registry.example.com/bhiv/' (repeatable; none: any image).",
        ),
    ] = None,
    shared_secret: Annotated[
        str | None,
        typer.Option(
            help="Create this Secret (BHIV_JWT_SECRET, BHIV_CREDENTIALS_KEY, random) in each "
            "namespace with modules unless it exists; never read, changed or deleted. For "
            "manifests/; the chart makes its own."
        ),
    ] = None,
    bootstrap: Annotated[
        Path | None,
        typer.Option(
            help="Before watching, apply the BhivModules and KopfPeering in this directory's YAML "
            "files to the watched namespace (kubectl cannot, in the run that makes their CRDs).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    resync_seconds: Annotated[
        float,
        typer.Option(
            help="Queue every module for a reconcile this often, a safety net under the "
            "watches (an unchanged module costs no API request).",
            min=1.0,
        ),
    ] = 60.0,
) -> None:
    """Run the Kubernetes operator: BhivModules become Deployments, Services, HPAs, PDBs."""
    if kubeconfig:
        # Kopf's login reads $KUBECONFIG, and the kubernetes package reads it once,
        # when first imported: set it before either is imported.
        os.environ["KUBECONFIG"] = kubeconfig
    from bhiv.operator.main import run

    if bool(namespace) == all_namespaces:
        err.print(
            "[red]error:[/] give --namespace NAME (repeatable) or --all-namespaces, not both or neither"
        )
        raise typer.Exit(2)
    if bootstrap is not None and len(namespace or []) != 1:
        err.print("[red]error:[/] --bootstrap applies into one namespace: give one --namespace")
        raise typer.Exit(2)
    run(
        namespaces=namespace or [],
        clusterwide=all_namespaces,
        peering=peering,
        priority=priority,
        liveness_port=liveness_port,
        metrics_port=metrics_port,
        kubeconfig=kubeconfig,
        cluster_domain=cluster_domain,
        listen_host=listen_host,
        verbose=verbose,
        allowed_images=tuple(allowed_image or ()),
        shared_secret=shared_secret,
        bootstrap_dir=bootstrap,
        resync_seconds=resync_seconds,
    )


app.command("wait-modules")(wait_modules)
app.command("modules")(modules_command)
app.command("provision-databases")(provision_databases)

BackupServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="BHIV_BACKUP_SERVER_URL",
        help="A PostgreSQL server with one database per service (the chart's bundled one), "
        "e.g. postgresql://postgres@127.0.0.1:5432/postgres.",
        show_default=False,
    ),
]
BackupDatabases = Annotated[
    list[str] | None,
    typer.Option(
        "--database",
        help="SERVICE=URL: where that service's database is (repeatable).",
        show_default=False,
    ),
]
BackupServices = Annotated[
    list[str] | None,
    typer.Option(
        "--service", help="Only this service (repeatable); default: every one.", show_default=False
    ),
]
BackupDataDir = Annotated[
    Path | None,
    typer.Option(help="Where the SQLite files are (default: BHIV_DATA_DIR).", show_default=False),
]


def _backup_targets(
    services: list[str], server: str | None, databases: list[str] | None, data_dir: Path | None
) -> list[Any]:
    from bhiv.cli.backup import resolve_targets

    urls = {}
    for item in databases or []:
        name, sep, url = item.partition("=")
        if not sep or not url:
            err.print(f"[red]error:[/] --database {name}=...: give SERVICE=URL")
            raise typer.Exit(2)
        urls[_entry(name).name] = url
    for name in services:
        if not load_spec(_entry(name).name).has_database:
            err.print(f"[red]error:[/] {name} has no database")
            raise typer.Exit(2)
    return resolve_targets(services, server=server, databases=urls, data_dir=data_dir)


def _with_database() -> list[str]:
    return [name for name in catalog.SERVICES if load_spec(name).has_database]


@contextmanager
def _exit_on_backup_error() -> Iterator[None]:
    from bhiv.cli.backup import BackupError

    try:
        yield
    except BackupError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _report(done: str, targets: list[Any]) -> None:
    for target in targets:
        err.print(f"[green]{done}[/] {target.service} ({target.kind})")


@app.command("backup")
def backup_command(
    directory: Annotated[
        Path, typer.Argument(help="A new directory for the backup.", show_default=False)
    ],
    server: BackupServer = None,
    database: BackupDatabases = None,
    service: BackupServices = None,
    data_dir: BackupDataDir = None,
) -> None:
    """Back up every service's database (pg_dump, or SQLite's online backup) into DIRECTORY."""
    from bhiv.cli.backup import backup

    targets = _backup_targets(service or _with_database(), server, database, data_dir)
    with _exit_on_backup_error():
        backup(targets, directory)
    _report("backed up", targets)


@app.command("restore")
def restore_command(
    directory: Annotated[
        Path, typer.Argument(help="A directory made by `bhiv backup`.", show_default=False)
    ],
    server: BackupServer = None,
    database: BackupDatabases = None,
    service: BackupServices = None,
    data_dir: BackupDataDir = None,
) -> None:
    """Restore the services' databases from DIRECTORY, replacing what they hold."""
    from bhiv.cli.backup import read_manifest, restore

    with _exit_on_backup_error():
        names = service or list(read_manifest(directory))
        targets = _backup_targets(names, server, database, data_dir)
        restore(targets, directory)
    _report("restored", targets)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="bhiv")


if __name__ == "__main__":  # pragma: no cover
    main()
