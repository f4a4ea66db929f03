"""The chart's databases and shared secrets, as rendered: the bundled PostgreSQL by
default (StatefulSet, Services, passwords Secret, provisioning hook), external URLs,
a Secret of one's own per service (CloudNativePG's app Secret), SQLite when nothing
is configured; the credentials key given to the integrations pods only.

Installed on a real node in tests/e2e; here `helm template` is the interface."""

from __future__ import annotations

import base64
from typing import Any

from bhiv import catalog
from bhiv.cli.databases import database_name, password_variable
from tests.cluster.chart.conftest import VALUES_FULL, Tool, render

# Every service with a database, in the chart's startup order.
DATABASE_SERVICES = ["integrations", "llm-query", "logistics", "crm", "agent-orchestration"]


def test_every_service_with_a_database_is_listed() -> None:
    assert set(DATABASE_SERVICES) == set(catalog.SERVICES) - {"gateway"}


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _database_refs(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: (m["spec"].get("database") or {}).get("secretRef")
        for name, m in _by_kind(docs, "BhivModule").items()
    }


def _secret(doc: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    return {**data, **(doc.get("stringData") or {})}


def test_default_bundles_postgresql_with_a_database_per_service(helm: Tool) -> None:
    docs = render(helm, namespace="shop")
    refs = _database_refs(docs)
    assert refs == {
        **{name: {"name": "bhiv-postgresql", "key": name} for name in DATABASE_SERVICES},
        "gateway": None,
    }
    secret = _by_kind(docs, "Secret")["bhiv-postgresql"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = _secret(secret)
    passwords = [data["postgres-password"]] + [data[f"{s}-password"] for s in DATABASE_SERVICES]
    assert len(set(passwords)) == len(passwords) and min(map(len, passwords)) >= 32
    for service in DATABASE_SERVICES:
        name = database_name(service)
        assert data[service] == (
            f"postgresql+psycopg://{name}:{data[f'{service}-password']}"
            f"@bhiv-postgresql.shop.svc:5432/{name}"
        )

    sts = _by_kind(docs, "StatefulSet")["bhiv-postgresql"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "docker.io/library/postgres:17.6"
    assert sts["spec"]["serviceName"] == "bhiv-postgresql-hl"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["data"] == (
        "/var/lib/postgresql/data"
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "bhiv-postgresql",
        "key": "postgres-password",
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"][0] == "pg_isready"
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["fsGroup"] == 999
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "1Gi"

    services = _by_kind(docs, "Service")
    assert services["bhiv-postgresql"]["spec"]["type"] == "ClusterIP"
    assert services["bhiv-postgresql-hl"]["spec"]["clusterIP"] == "None"
    for svc in services.values():
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]

    # The hook creating roles and databases: before the startup-order hooks, every
    # password from the Secret, none on its command line.
    job = _by_kind(docs, "Job")["bhiv-provision-databases"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["metadata"]["annotations"]["helm.sh/hook-weight"] == "0"
    (provision,) = job["spec"]["template"]["spec"]["containers"]
    assert provision["args"] == ["provision-databases", "--timeout", "300", *DATABASE_SERVICES]
    job_env = {
        e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"] for e in provision["env"]
    }
    assert job_env["PGHOST"] == "bhiv-postgresql" and job_env["PGUSER"] == "postgres"
    for service in DATABASE_SERVICES:
        assert job_env[password_variable(service)] == {
            "name": "bhiv-postgresql",
            "key": f"{service}-password",
        }


def test_persistence_and_image_values(helm: Tool) -> None:
    docs = render(
        helm,
        "--set",
        "postgresql.persistence.size=50Gi",
        "--set",
        "postgresql.persistence.storageClass=local-path",
        "--set",
        "postgresql.image.repository=postgres-test",
        "--set",
        "postgresql.image.tag=15",
        "--set",
        "postgresql.image.pullPolicy=Never",
    )
    sts = _by_kind(docs, "StatefulSet")["bhiv-postgresql"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "local-path"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("postgres-test:15", "Never")


def test_external_mode_without_bundled_postgresql(helm: Tool) -> None:
    urls = {s: f"postgresql+psycopg://u:p@db.example/{s}" for s in DATABASE_SERVICES}
    args = ["--set", "postgresql.enabled=false"]
    for service, url in urls.items():
        args += ["--set", f"database.urls.{service}={url}"]
    docs = render(helm, *args)
    assert not _by_kind(docs, "StatefulSet")
    assert "bhiv-postgresql" not in _by_kind(docs, "Secret")
    assert "bhiv-provision-databases" not in _by_kind(docs, "Job")
    refs = _database_refs(docs)
    assert refs == {
        **{s: {"name": "bhiv-database", "key": s} for s in DATABASE_SERVICES},
        "gateway": None,
    }
    assert _secret(_by_kind(docs, "Secret")["bhiv-database"]) == urls
    # A Secret of one's own instead: the same keys, read from it.
    own = render(
        helm, "--set", "postgresql.enabled=false", "--set", "database.existingSecret=my-urls"
    )
    assert _database_refs(own)["crm"] == {"name": "my-urls", "key": "crm"}
    assert "bhiv-database" not in _by_kind(own, "Secret")
    # Nothing at all: SQLite in each pod (the operator's default; one replica each).
    bare = render(helm, "--set", "postgresql.enabled=false")
    assert set(_database_refs(bare).values()) == {None}


def test_each_source_per_service_and_cloudnativepg(helm: Tool) -> None:
    """The full values mix them: URLs for three services, CloudNativePG's app Secret
    (key uri) for crm, and the bundled PostgreSQL for the one left."""
    docs = render(helm, "-f", str(VALUES_FULL))
    refs = _database_refs(docs)
    assert refs == {
        "integrations": {"name": "bhiv-database", "key": "integrations"},
        "llm-query": {"name": "bhiv-database", "key": "llm-query"},
        "logistics": {"name": "bhiv-database", "key": "logistics"},
        "crm": {"name": "pg-crm-app", "key": "uri"},
        "agent-orchestration": {"name": "bhiv-postgresql", "key": "agent-orchestration"},
        "gateway": None,
    }
    assert set(_secret(_by_kind(docs, "Secret")["bhiv-postgresql"])) == {
        "postgres-password",
        "agent-orchestration-password",
        "agent-orchestration",
    }
    (provision,) = _by_kind(docs, "Job")["bhiv-provision-databases"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert provision["args"] == ["provision-databases", "--timeout", "120", "agent-orchestration"]
    sts = _by_kind(docs, "StatefulSet")["bhiv-postgresql"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 70
    # Every service given a database of its own elsewhere: no bundled server at all.
    none_bundled = render(
        helm, "-f", str(VALUES_FULL), "--set", "database.urls.agent-orchestration=postgresql://x/y"
    )
    assert not _by_kind(none_bundled, "StatefulSet")


def test_credentials_key_for_the_integrations_pods_only(helm: Tool) -> None:
    docs = render(helm)
    secret = _by_kind(docs, "Secret")["bhiv-credentials"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = _secret(secret)["BHIV_CREDENTIALS_KEY"]
    assert len(key) >= 64 and "," not in key  # commas separate rotated keys
    env_from = {n: m["spec"]["envFrom"] for n, m in _by_kind(docs, "BhivModule").items()}
    for name, sources in env_from.items():
        names = [s["secretRef"]["name"] for s in sources]
        expected = ["bhiv-jwt", "bhiv-credentials"] if name == "integrations" else ["bhiv-jwt"]
        assert names == expected, name
    # A key of one's own: no generated Secret, the integrations pods read that one.
    own = render(helm, "-f", str(VALUES_FULL))
    assert "bhiv-credentials" not in _by_kind(own, "Secret")
    integrations = _by_kind(own, "BhivModule")["integrations"]
    assert {"secretRef": {"name": "integrations-credentials"}} in integrations["spec"]["envFrom"]


def test_bundled_postgresql_with_a_secret_of_ones_own(helm: Tool) -> None:
    docs = render(helm, "--set", "postgresql.existingSecret=pg-passwords")
    assert "bhiv-postgresql" not in _by_kind(docs, "Secret")
    assert _database_refs(docs)["crm"] == {"name": "pg-passwords", "key": "crm"}
    sts = _by_kind(docs, "StatefulSet")["bhiv-postgresql"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pg-passwords"
    (provision,) = _by_kind(docs, "Job")["bhiv-provision-databases"]["spec"]["template"]["spec"][
        "containers"
    ]
    job_env = {
        e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"] for e in provision["env"]
    }
    assert job_env["PGHOST"] == "bhiv-postgresql"
    assert job_env["BHIV_DATABASE_PASSWORD_CRM"] == {"name": "pg-passwords", "key": "crm-password"}


def test_an_upgrade_of_bhiv_leaves_the_database_pod_alone(helm: Tool) -> None:
    """A new BHIV image or chart version changes nothing in PostgreSQL's pod template
    (a change there restarts the database under every service: 638 failed reads in
    the e2e rollout)."""

    def template(*args: str) -> dict[str, Any]:
        docs = render(helm, *args)
        return _by_kind(docs, "StatefulSet")["bhiv-postgresql"]["spec"]["template"]

    assert template("--set", "image.tag=1.0.0") == template("--set", "image.tag=2.0.0")
