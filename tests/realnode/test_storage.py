"""PersistentVolumeClaims on the real node: local-path-provisioner (hack/real-node)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.support.realnode import RealNode, eventually

# The helper pods' image hack/real-node imports (Debian's static busybox): on the
# node already, so the test pods need no pull and no project image build.
BUSYBOX_IMAGE = "bhiv.local/busybox:debian"
LOCAL_PATH_DIR_SUFFIX = "/realnode/local-path/"


def _claim(namespace: str) -> dict:
    # No storageClassName: the node's default StorageClass must take it.
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }


def _pod(namespace: str, name: str, script: str) -> dict:
    """A one-shot pod that runs ``script`` with the claim at /data, as a non-root user
    under the restricted profile (as the platform's own pods run)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }


def _run_to_completion(node: RealNode, pod: dict) -> str:
    """Apply the pod, wait for it to succeed, return its log, delete it."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    node.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def phase() -> str | None:
        got = node.get_json("pod", name, "-n", namespace)["status"].get("phase")
        if got == "Failed":
            logs = node.kubectl("logs", name, "-n", namespace, check=False).stdout
            raise AssertionError(f"pod {name} failed: {logs}")
        return got if got == "Succeeded" else None

    try:
        eventually(phase, timeout=180, what=f"pod {name} to succeed")
    except AssertionError:
        events = node.kubectl("get", "events", "-n", namespace, check=False).stdout
        pvc = node.kubectl("describe", "pvc", "data", "-n", namespace, check=False).stdout
        raise AssertionError(f"pod {name} did not succeed\n{events}\n{pvc}") from None
    logs = node.kubectl("logs", name, "-n", namespace).stdout
    node.kubectl("delete", "pod", name, "-n", namespace, "--wait=true", "--timeout=60s")
    return logs


@pytest.fixture(scope="module")
def namespace(real_node: RealNode) -> Iterator[str]:
    name = f"t-storage-{os.getpid() % 100000}"
    real_node.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        real_node.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def test_default_storage_class_is_local_path(real_node: RealNode) -> None:
    classes = real_node.get_json("storageclass")["items"]
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert defaults == ["local-path"]
    local_path = next(c for c in classes if c["metadata"]["name"] == "local-path")
    assert local_path["provisioner"] == "rancher.io/local-path"
    assert local_path["volumeBindingMode"] == "WaitForFirstConsumer"


def test_claim_binds_and_data_outlives_the_pod(real_node: RealNode, namespace: str) -> None:
    real_node.kubectl("apply", "-f", "-", input=json.dumps(_claim(namespace)))
    # WaitForFirstConsumer: nothing is provisioned before a pod uses the claim.
    claim = real_node.get_json("pvc", "data", "-n", namespace)
    assert claim["status"]["phase"] == "Pending"

    write = "echo kept-across-pods > /data/marker && id -u && cat /data/marker"
    written = _run_to_completion(real_node, _pod(namespace, "writer", write))
    assert written.split() == ["65532", "kept-across-pods"]

    claim = real_node.get_json("pvc", "data", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"
    volume = real_node.get_json("pv", claim["spec"]["volumeName"])
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    host_path = volume["spec"]["hostPath"]["path"]
    assert LOCAL_PATH_DIR_SUFFIX in host_path
    # The writer pod is gone; a new pod on the same claim reads what it wrote.
    read = _run_to_completion(real_node, _pod(namespace, "reader", "cat /data/marker"))
    assert read.strip() == "kept-across-pods"

    # Deleting the claim deletes the volume and (helper pod) its directory on the node.
    real_node.kubectl("delete", "pvc", "data", "-n", namespace, "--wait=true", "--timeout=60s")
    eventually(
        lambda: (
            real_node.kubectl("get", "pv", volume["metadata"]["name"], check=False).returncode != 0
        ),
        timeout=120,
        what="the released volume to be deleted",
    )
    # (The node runs on this machine, so its directories are visible here.)
    assert not os.path.exists(host_path)
