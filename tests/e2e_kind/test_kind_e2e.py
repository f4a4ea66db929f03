"""BHIV Core installed by its Helm chart on a real cluster, used through the Ingress
as a client would: a token from POST /auth/token, then an inventory item created
and read back through the gateway (/api/logistics)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid

import httpx

from tests.e2e_kind.conftest import E2ECluster

SERVICES = {"integrations", "llm-query", "logistics", "crm", "agent-orchestration"}


def _token(e2e: E2ECluster) -> str:
    r = httpx.post(f"{e2e.ingress_url}/auth/token", headers={"X-API-Key": e2e.api_key}, timeout=15)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["roles"] == ["editor"]  # noqa: S105 - not a secret
    return body["access_token"]


def test_every_module_ready_and_routed(e2e: E2ECluster) -> None:
    modules = json.loads(e2e.k("get", "bhivmodules", "-n", e2e.namespace, "-o", "json").stdout)[
        "items"
    ]
    ready = {
        m["metadata"]["name"]: next(
            c["status"] for c in m["status"]["conditions"] if c["type"] == "Ready"
        )
        for m in modules
    }
    assert ready == dict.fromkeys([*SERVICES, "gateway"], "True")
    r = httpx.get(
        f"{e2e.ingress_url}/services",
        headers={"Authorization": f"Bearer {_token(e2e)}"},
        timeout=15,
    )
    assert r.status_code == 200, r.text
    assert r.json()["discovery"] == "kubernetes"
    status = {s["name"]: s["status"] for s in r.json()["services"]}
    assert {name: status.get(name) for name in SERVICES} == dict.fromkeys(SERVICES, "up")


def test_inventory_item_through_the_ingress(e2e: E2ECluster) -> None:
    headers = {"Authorization": f"Bearer {_token(e2e)}"}
    sku = f"E2E-{uuid.uuid4().hex[:8].upper()}"
    created = httpx.post(
        f"{e2e.ingress_url}/api/logistics/inventory",
        json={
            "sku": sku,
            "name": "kind e2e widget",
            "quantity": 12,
            "reorder_level": 2,
            "unit_cost": "1.25",
        },
        headers=headers,
        timeout=15,
    )
    assert created.status_code == 201, created.text
    item = created.json()
    got = httpx.get(
        f"{e2e.ingress_url}/api/logistics/inventory/{item['id']}", headers=headers, timeout=15
    )
    assert got.status_code == 200, got.text
    assert got.json()["sku"] == sku and got.json()["quantity"] == 12
    # Without a credential the gateway refuses before the service is reached.
    assert (
        httpx.get(f"{e2e.ingress_url}/api/logistics/inventory/{item['id']}", timeout=15).status_code
        == 401
    )


def test_token_minted_with_the_release_secret(e2e: E2ECluster) -> None:
    """NOTES.txt's way: `bhiv token` with the JWT Secret the chart generated."""
    encoded = e2e.k(
        "get", "secret", "bhiv-jwt", "-n", e2e.namespace, "-o", "jsonpath={.data.BHIV_JWT_SECRET}"
    ).stdout
    env = {**os.environ, "BHIV_JWT_SECRET": base64.b64decode(encoded).decode()}
    minted = (
        subprocess.run(
            [sys.executable, "-m", "bhiv", "token", "--role", "viewer"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    r = httpx.get(
        f"{e2e.ingress_url}/services", headers={"Authorization": f"Bearer {minted}"}, timeout=15
    )
    assert r.status_code == 200, r.text


def test_helm_test_passes(e2e: E2ECluster) -> None:
    # No --logs: the chart's test pod is deleted once it succeeds (hook-succeeded),
    # so asking for its logs would fail a passing test. Its exit code is the verdict.
    out = e2e.h("test", "bhiv", "--namespace", e2e.namespace, "--timeout", "5m", timeout=400).stdout
    assert "Phase:          Succeeded" in out, out
