"""Fixtures for the real-node tier: a single-node Kubernetes where containers run.

``hack/real-node up`` starts etcd, the control plane, containerd, kubelet and
kube-proxy on this machine (node address 198.51.100.10 on a dummy interface, pods on
a local bridge); ``hack/real-node down`` at the end of the session stops them and
fails if any process, mount, interface, iptables rule or cgroup is left.

The tier runs only with ``BHIV_TEST_REAL_NODE=1`` (and as root on Linux): it is not
yet proven stable enough for the default ``make test``. Every test in this directory
is marked ``realnode``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
TESTS_DIR = Path(__file__).resolve().parent
NODE_IP = "198.51.100.10"

T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TESTS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.realnode)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own scripts, fixed arguments
        args, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class RealNode:
    kubeconfig: Path
    bin_dir: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        proc = subprocess.run(  # noqa: S603
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=180,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def eventually(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 1.0
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the last error is the report
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    if os.environ.get("BHIV_TEST_REAL_NODE") != "1":
        pytest.skip(
            "real-node tier: set BHIV_TEST_REAL_NODE=1 to run it (starts a real single-node "
            "Kubernetes with containerd on this machine; needs root; not yet in the default run)"
        )
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("real-node tier: needs root on Linux (network namespaces, iptables, cgroups)")
    up = _run(str(HACK_DIR / "real-node"), "up")
    if up.returncode != 0:
        down = _run(str(HACK_DIR / "real-node"), "down")
        pytest.fail(
            f"hack/real-node up failed:\n{_tail(up.stdout)}\n{_tail(up.stderr)}\n"
            f"(down: exit {down.returncode}: {_tail(down.stdout + down.stderr, 10)})"
        )
    bin_dir = Path(_run(str(HACK_DIR / "k8s-tools"), "--print-bin-dir").stdout.strip())
    kubeconfig = Path(_run(str(HACK_DIR / "real-node"), "kubeconfig").stdout.strip())
    try:
        yield RealNode(kubeconfig=kubeconfig, bin_dir=bin_dir)
    finally:
        if os.environ.get("BHIV_TEST_KEEP_REAL_NODE") != "1":
            down = _run(str(HACK_DIR / "real-node"), "down")
            assert down.returncode == 0, (
                f"hack/real-node down left something behind:\n{down.stdout}\n{down.stderr}"
            )


@pytest.fixture(scope="session")
def node_image(real_node: RealNode) -> str:
    """The project image, built with hack/build-image and loaded into the node.

    dockerd is only the build tool here: when this fixture had to start it
    (hack/docker up), it stops it again once the image is in the node's containerd.
    """
    started_docker = _run(str(HACK_DIR / "docker"), "status").returncode != 0
    if started_docker:
        up = _run(str(HACK_DIR / "docker"), "up")
        if up.returncode != 0:
            # Another session may have started one at the same moment: use it, not own it.
            if _run(str(HACK_DIR / "docker"), "status").returncode != 0:
                pytest.fail(f"hack/docker up failed:\n{_tail(up.stdout + up.stderr)}")
            started_docker = False
    try:
        image = os.environ.get("BHIV_TEST_IMAGE", "")
        if not image:
            image = "bhiv-core:realnode"
            build = _run(str(HACK_DIR / "build-image"), "--tag", image, timeout=1800)
            if build.returncode != 0:
                pytest.fail(f"hack/build-image failed:\n{_tail(build.stdout + build.stderr)}")
        load = _run(str(HACK_DIR / "real-node"), "load-image", image)
        assert load.returncode == 0, f"load-image {image} failed:\n{load.stdout}\n{load.stderr}"
    finally:
        if started_docker:
            _run(str(HACK_DIR / "docker"), "down")
    return image
