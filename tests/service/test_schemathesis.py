"""Schemathesis against every service's live OpenAPI, on SQLite and PostgreSQL:
no input may cause a server error (see schemathesis.toml for the few operations
whose documented answer to an unreachable dependency is 502/503/504), and the
service may log no unhandled exception."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bhiv import catalog
from tests.support.servers import service_process

# Bounded so the suite's length is predictable; the seed makes a failure
# reproducible with the same command.
MAX_EXAMPLES = 25
SEED = 20261126


CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.parametrize("service", sorted(catalog.SERVICES))
def test_no_server_errors(
    service: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres").create_database() if backend == "postgres" else None
    server = service_process(service, tmp_path, url).start()
    try:
        cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        result = subprocess.run(
            [
                cli,
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                str(SEED),
                "--header",
                f"Authorization: Bearer {server.token('admin')}",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"schemathesis found server errors in {service}:\n{output[-6000:]}\n{server.log()[-3000:]}"
    )
    assert " passed" in output
    crashes = [line for line in server.log().splitlines() if "unhandled error" in line]
    assert not crashes, f"{service} logged unhandled errors:\n" + "\n".join(crashes[:5])
