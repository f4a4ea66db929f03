"""Rotating BHIV_CREDENTIALS_KEY: new key first with the old one kept, `bhiv
reencrypt-credentials`, then the old key dropped. Stored credentials and webhook
secrets keep working at every step; a key that opens nothing changes nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.integrations.conftest import FAST
from tests.service.integrations.helpers import created, new_source, unique
from tests.service.integrations.peers import Source, source
from tests.service.integrations.test_inbound import post, signed
from tests.support.servers import ServiceProcess, service_process

TOKEN = "tok-" + "Rot8Keys4Stored2Secrets"
OLD, NEW = "old-credentials-key-for-tests-0001", "new-credentials-key-for-tests-0002"


@pytest.fixture(scope="module")
def api_server() -> Iterator[Source]:
    with source(TOKEN) as s:
        yield s


@pytest.fixture
def service(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ServiceProcess]:
    url = request.getfixturevalue("postgres").create_database() if backend == "postgres" else None
    server = service_process(
        "integrations", tmp_path, url, **(FAST | {"BHIV_CREDENTIALS_KEY": OLD})
    )
    try:
        yield server
    finally:
        server.stop()


def _restart_with(server: ServiceProcess, keys: str) -> None:
    server.stop()
    server.env["BHIV_CREDENTIALS_KEY"] = keys
    server.start()


def _reencrypt(server: ServiceProcess, keys: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bhiv", "reencrypt-credentials"],
        env={**server.env, "BHIV_CREDENTIALS_KEY": keys},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _works(server: ServiceProcess, hook: dict, connection: dict) -> None:
    """The stored webhook secret verifies a signature; the stored token authenticates."""
    body = f'{{"type": "rotation.checked", "data": {{"n": "{unique("m")}"}}}}'.encode()
    accepted = post(server, hook["name"], body, signed(hook["secret"], body))
    assert accepted.status_code == 202, accepted.text
    tested = server.client().post(f"/connections/{connection['id']}/test").json()
    assert tested["ok"] is True, tested


def test_rotate_reencrypt_then_drop_the_old_key(
    service: ServiceProcess, api_server: Source
) -> None:
    service.start()
    api = service.client()
    hook = new_source(api)
    body = {
        "name": unique("conn"),
        "base_url": api_server.url,
        "auth_type": "bearer",
        "credentials": {"token": TOKEN},
        "health_path": "/health",
    }
    connection = created(api.post("/connections", json=body))
    _works(service, hook, connection)

    # 1. New key first, old kept: everything still opens.
    _restart_with(service, f"{NEW},{OLD}")
    _works(service, hook, connection)

    # A key list that opens nothing is refused before anything is changed.
    refused = _reencrypt(service, "some-unrelated-key-for-tests-0003")
    assert refused.returncode == 1 and "none of the keys" in refused.stderr, refused.stderr
    assert OLD not in refused.stderr + refused.stdout and NEW not in refused.stderr + refused.stdout

    # 2. Re-encrypt with the new key.
    done = _reencrypt(service, f"{NEW},{OLD}")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 secret(s) in connections" in done.stderr
    assert "re-encrypted 1 secret(s) in webhook_sources" in done.stderr

    # 3. The old key dropped: still works.
    _restart_with(service, NEW)
    _works(service, hook, connection)
