"""The operator's image allow-list on a real API server: a module whose image is
not allowed gets no Deployment (an existing one keeps its image), a status
reason and a Warning event."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.operator.conftest import OperatorProcess, condition, get_json, wait_for

Kubectl = Callable[..., Any]
ALLOWED = "registry.example.com/bhiv/"


@pytest.fixture
def strict_operator(
    namespace: str, operator_rbac: Path, tmp_path: Path
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        namespace, operator_rbac, tmp_path / "operator.log", args=["--allowed-image", ALLOWED]
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def image_of(kubectl: Kubectl, ns: str, name: str) -> str | None:
    deployment = get_json(kubectl, "deployment", name, "-n", ns)
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"] if deployment else None


def refused(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    body = get_json(kubectl, "bm", name, "-n", ns)
    ready = condition(body, "Ready")
    current = body and ready.get("observedGeneration") == body["metadata"]["generation"]
    return ready if current and ready.get("reason") == "ImageNotAllowed" else None


def test_images_outside_the_allow_list_never_reach_a_deployment(
    kubectl: Kubectl, namespace: str, strict_operator: OperatorProcess, modules: Any
) -> None:
    modules("rogue", image="evil.example/miner:latest")
    modules("shop", image=f"{ALLOWED}core:1")

    ready = wait_for(lambda: refused(kubectl, namespace, "rogue"), "rogue refused")
    assert ready["status"] == "False" and "evil.example/miner:latest" in ready["message"]
    assert get_json(kubectl, "deployment", "rogue", "-n", namespace) is None
    events = wait_for(
        lambda: (
            (
                out := kubectl(
                    "get",
                    "events",
                    "-n",
                    namespace,
                    "--field-selector",
                    "involvedObject.name=rogue,type=Warning",
                ).stdout
            )
            and "ImageNotAllowed" in out
            and out
        ),
        "a Warning event",
    )
    assert "ImageNotAllowed" in events

    # An allowed module runs; changed to a refused image, its Deployment is left as it was.
    wait_for(
        lambda: image_of(kubectl, namespace, "shop") == f"{ALLOWED}core:1", "shop's Deployment"
    )
    kubectl(
        "patch",
        "bm",
        "shop",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"image": "docker.io/evil/core:1"}}',
    )
    wait_for(lambda: refused(kubectl, namespace, "shop"), "shop refused")
    assert image_of(kubectl, namespace, "shop") == f"{ALLOWED}core:1"

    # Back to an allowed image: reconciled as usual.
    kubectl(
        "patch",
        "bm",
        "shop",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        f'{{"spec": {{"image": "{ALLOWED}core:2"}}}}',
    )
    wait_for(
        lambda: image_of(kubectl, namespace, "shop") == f"{ALLOWED}core:2", "shop rolled to core:2"
    )
    wait_for(
        lambda: (
            condition(get_json(kubectl, "bm", "shop", "-n", namespace), "Ready").get("reason")
            != "ImageNotAllowed"
        ),
        "shop no longer refused",
    )
