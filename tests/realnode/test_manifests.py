"""`kubectl apply -k manifests/` on the real node, as a user runs it: one run on a
cluster without the CRDs, the operator as a pod, the six modules on SQLite, each on a
PersistentVolumeClaim of its own (the node's local-path provisioner), all reading the
shared secrets the operator made. Data written to Logistics survives its pod."""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bhiv.core.auth import mint_token
from bhiv.core.settings import ServiceSettings
from tests.support.realnode import RealNode, eventually

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "bhiv"  # fixed by manifests/kustomization.yaml
MODULES = ["integrations", "llm-query", "logistics", "crm", "agent-orchestration", "gateway"]
# The tag manifests/ names; the image built from this tree is loaded under it.
MANIFESTS_IMAGE = "bhiv-core:0.1.0"


def _ready(node: RealNode, name: str) -> bool:
    body = node.get_json("bm", name, "-n", NAMESPACE)
    conditions = {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def _logistics_pod(node: RealNode) -> dict:
    pods = node.get_json("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=logistics")
    running = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods["items"]]
    return running[0]


@pytest.fixture(scope="module")
def applied(real_node: RealNode, node_image: str) -> Iterator[None]:
    subprocess.run(["docker", "tag", node_image, MANIFESTS_IMAGE], check=True, timeout=60)  # noqa: S607
    real_node.load_image(MANIFESTS_IMAGE)
    # A cluster that has never seen BHIV: the CRDs left by an earlier tier (helm uninstall
    # keeps them on purpose) go first, so the apply below must install them itself.
    real_node.kubectl(
        "delete", "crd", "bhivmodules.bhiv.io", "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev", "--ignore-not-found", "--wait=true", "--timeout=180s",
    )  # fmt: skip
    assert real_node.kubectl("get", "crd", "bhivmodules.bhiv.io", check=False).returncode != 0
    try:
        result = real_node.kubectl("apply", "-k", str(REPO / "manifests"), check=False)
        assert result.returncode == 0, result.stderr
        assert "ensure CRDs are installed first" not in result.stderr
        try:
            for name in MODULES:
                eventually(
                    functools.partial(_ready, real_node, name),
                    timeout=300,
                    what=f"module {name} Ready",
                )
        except AssertionError:
            pods = real_node.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False)
            logs = real_node.kubectl(
                "logs", "-n", NAMESPACE, "deploy/bhiv-operator", "--tail=40", check=False
            )
            raise AssertionError(f"{pods.stdout}\n{logs.stdout}") from None
        yield
    finally:
        real_node.kubectl(
            "delete", "-k", str(REPO / "manifests"), "--wait=true", "--timeout=180s", check=False
        )


def test_one_apply_brings_every_module_up_on_its_claim(real_node: RealNode, applied: None) -> None:
    for name in MODULES:
        if name == "gateway":
            continue  # keeps no data: no claim
        claim = real_node.get_json("pvc", f"{name}-data", "-n", NAMESPACE)
        assert claim["status"]["phase"] == "Bound"
        assert claim["spec"]["storageClassName"] == "local-path"
        deployment = real_node.get_json("deployment", name, "-n", NAMESPACE)
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    secret = real_node.get_json("secret", "bhiv-shared-secrets", "-n", NAMESPACE)
    assert sorted(secret["data"]) == ["BHIV_CREDENTIALS_KEY", "BHIV_JWT_SECRET"]


def test_logistics_data_survives_its_pod(real_node: RealNode, applied: None) -> None:
    secret = real_node.get_json("secret", "bhiv-shared-secrets", "-n", NAMESPACE)
    jwt_secret = base64.b64decode(secret["data"]["BHIV_JWT_SECRET"]).decode()
    token = mint_token(
        ServiceSettings(jwt_secret=jwt_secret), subject="realnode", roles=["admin"], ttl_seconds=600
    )
    headers = {"Authorization": f"Bearer {token}"}
    sku = f"SKU-{uuid.uuid4().hex[:10]}"

    pod = _logistics_pod(real_node)
    url = f"http://{pod['status']['podIP']}:8001"
    created = httpx.post(
        f"{url}/inventory",
        json={"sku": sku, "name": "Kept", "quantity": 7, "unit_cost": "1.25"},
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 201, created.text

    real_node.kubectl("delete", "pod", pod["metadata"]["name"], "-n", NAMESPACE, "--wait=true")

    def new_pod_ready() -> dict | None:
        fresh = _logistics_pod(real_node)
        if fresh["metadata"]["uid"] == pod["metadata"]["uid"]:
            return None
        statuses = fresh.get("status", {}).get("containerStatuses") or []
        return fresh if statuses and all(s.get("ready") for s in statuses) else None

    fresh = eventually(new_pod_ready, timeout=180, what="a new, ready logistics pod")
    url = f"http://{fresh['status']['podIP']}:8001"
    got = httpx.get(f"{url}/inventory/sku/{sku}", headers=headers, timeout=30)
    assert got.status_code == 200, got.text
    assert json.loads(got.text)["quantity"] == 7


@pytest.mark.parametrize(
    ("spec", "reasons", "says"),
    [
        # Nothing answers for this registry here: the pull fails at once, then backs off.
        (
            {
                "service": "crm",
                "image": "registry.invalid/bhiv-core:none",
                "imagePullPolicy": "Always",
            },
            {"ErrImagePull", "ImagePullBackOff"},
            "registry.invalid/bhiv-core:none",
        ),
        # The service refuses its settings and exits; the kubelet restarts it, then backs off.
        (
            {
                "service": "crm",
                "image": MANIFESTS_IMAGE,
                "env": [{"name": "BHIV_LOG_LEVEL", "value": "LOUDLY"}],
            },
            {"CrashLoopBackOff"},
            "exited with code",
        ),
    ],
    ids=["image-pull", "crash-loop"],
)
def test_a_stuck_module_says_why(
    real_node: RealNode, applied: None, spec: dict, reasons: set[str], says: str
) -> None:
    name = f"stuck-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "bhiv.io/v1alpha1",
        "kind": "BhivModule",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"storage": {"ephemeral": True}, **spec},
    }
    real_node.kubectl("apply", "-f", "-", input=json.dumps(body))
    try:

        def reported() -> dict | None:
            module = real_node.get_json("bm", name, "-n", NAMESPACE)
            ready: dict = next(
                (c for c in module.get("status", {}).get("conditions", []) if c["type"] == "Ready"),
                {},
            )
            return ready if ready.get("reason") in reasons else None

        ready = eventually(reported, timeout=180, what=f"{name} Ready=False with one of {reasons}")
        assert says in ready["message"], ready
        events = real_node.get_json(
            "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name}"
        )
        assert any(e["type"] == "Warning" and e["reason"] in reasons for e in events["items"]), (
            events["items"]
        )
    finally:
        real_node.kubectl("delete", "bm", name, "-n", NAMESPACE, "--wait=false", check=False)
