from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bhiv.core.settings import MissingSharedSecret, ServiceSettings, load_or_create_local_secret
from bhiv.integrations.settings import IntegrationsSettings
from bhiv.logistics.settings import LogisticsSettings


def test_local_secret_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "d" / "jwt-secret"
    first = load_or_create_local_secret(path)
    assert len(first) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_local_secret(path) == first


def test_concurrent_first_use_agrees_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    with ThreadPoolExecutor(16) as pool:
        secrets = set(pool.map(lambda _: load_or_create_local_secret(path), range(32)))
    assert len(secrets) == 1 and list(tmp_path.iterdir()) == [path]


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BHIV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BHIV_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("BHIV_LOG_LEVEL", "debug")
    monkeypatch.setenv("BHIV_JWT_SECRET", "s3cret-value-never-printed")
    s = LogisticsSettings()
    assert s.port == 8001 and s.log_level == "DEBUG"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.sqlalchemy_url() == f"sqlite:///{tmp_path / 'logistics.db'}"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


def test_database_url_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BHIV_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/x")
    s = ServiceSettings()
    assert "hunter2" not in repr(s) and s.sqlalchemy_url().endswith("@db/x")


def test_bad_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BHIV_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        LogisticsSettings()


class TestSharedSecretsInKubernetes:
    """In a cluster no pod makes its own JWT secret or credentials key: each pod's
    would differ, so tokens and stored credentials would work on one pod only."""

    @pytest.fixture(autouse=True)
    def _no_secrets(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        for name in ("BHIV_JWT_SECRET", "BHIV_CREDENTIALS_KEY", "BHIV_REQUIRE_SHARED_SECRETS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("BHIV_DATA_DIR", str(tmp_path))

    def test_required_in_kubernetes_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert LogisticsSettings().require_shared_secrets is False
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        assert LogisticsSettings().require_shared_secrets is True
        monkeypatch.setenv("BHIV_REQUIRE_SHARED_SECRETS", "false")
        assert LogisticsSettings().require_shared_secrets is False

    @pytest.mark.parametrize(
        ("make", "variable", "file"),
        [
            (lambda: LogisticsSettings().jwt_signing_secret(), "BHIV_JWT_SECRET", "jwt-secret"),
            (
                lambda: IntegrationsSettings().credential_secrets(),
                "BHIV_CREDENTIALS_KEY",
                "credentials-key",
            ),
        ],
        ids=["jwt-secret", "credentials-key"],
    )
    def test_missing_secret_is_an_error_not_a_new_file(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: Any, variable: str, file: str
    ) -> None:
        monkeypatch.setenv("BHIV_REQUIRE_SHARED_SECRETS", "true")
        with pytest.raises(MissingSharedSecret, match=variable):
            make()
        assert not (tmp_path / file).exists()
        # Outside a cluster the local run keeps making it once, in the data directory.
        monkeypatch.setenv("BHIV_REQUIRE_SHARED_SECRETS", "false")
        made = make()
        assert (tmp_path / file).exists() and made

    def test_given_secrets_are_used_as_they_are(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BHIV_REQUIRE_SHARED_SECRETS", "true")
        monkeypatch.setenv("BHIV_JWT_SECRET", "shared-jwt-secret-0123456789abcdef")
        monkeypatch.setenv("BHIV_CREDENTIALS_KEY", "new-key,old-key")
        assert LogisticsSettings().jwt_signing_secret() == "shared-jwt-secret-0123456789abcdef"
        assert IntegrationsSettings().credential_secrets() == ["new-key", "old-key"]


@pytest.mark.parametrize(
    ("given", "used"),
    [
        # The uri key of a CloudNativePG app Secret, and the short scheme libpq accepts.
        ("postgresql://app:pw@pg-rw.db:5432/app", "postgresql+psycopg://app:pw@pg-rw.db:5432/app"),
        ("postgres://app:pw@pg-rw.db/app", "postgresql+psycopg://app:pw@pg-rw.db/app"),
        ("postgresql+psycopg://u:p@db/x", "postgresql+psycopg://u:p@db/x"),
        ("sqlite:////data/x.db", "sqlite:////data/x.db"),
    ],
)
def test_libpq_urls_get_the_installed_driver(given: str, used: str) -> None:
    assert ServiceSettings(database_url=given).sqlalchemy_url() == used
