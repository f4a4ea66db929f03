"""In a cluster a pod never makes its own shared secret: ``bhiv serve`` refuses to
start, saying which variable is missing, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.servers import TEST_JWT_SECRET


def _serve(service: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    return subprocess.run(
        [sys.executable, "-m", "bhiv", "serve", service, "--port", str(free_port())],
        # As the kubelet sets it in every container.
        env={**base, "BHIV_DATA_DIR": str(data_dir), "KUBERNETES_SERVICE_HOST": "10.96.0.1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("service", "env", "missing", "file"),
    [
        ("logistics", {}, "BHIV_JWT_SECRET", "jwt-secret"),
        ("gateway", {}, "BHIV_JWT_SECRET", "jwt-secret"),
        (
            "integrations",
            {"BHIV_JWT_SECRET": TEST_JWT_SECRET},
            "BHIV_CREDENTIALS_KEY",
            "credentials-key",
        ),
    ],
)
def test_missing_shared_secret_stops_the_pod(
    tmp_path: Path, service: str, env: dict[str, str], missing: str, file: str
) -> None:
    result = _serve(service, tmp_path, **env)
    assert result.returncode == 78, result.stderr
    assert missing in result.stderr and "cannot start" in result.stderr
    assert "Traceback" not in result.stderr
    assert TEST_JWT_SECRET not in result.stdout + result.stderr
    assert not (tmp_path / file).exists()
