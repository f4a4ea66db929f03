from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bhiv.core.settings import ServiceSettings, load_or_create_local_secret
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
