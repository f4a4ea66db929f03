"""A real single-node Kubernetes on this machine, for the tiers whose pods must run.

``hack/real-node up`` starts etcd, the control plane, containerd, kubelet,
kube-proxy, CoreDNS and Traefik (node address 198.51.100.10, pods on a local
bridge); ``hack/real-node down`` stops them and fails if any process, mount,
interface, iptables rule or cgroup is left. ``hack/real-node check`` says whether
this machine can run it at all (root, veth, iptables, cgroups, the built tools):
when it cannot, the tiers skip with its reasons.

``BHIV_TEST_REAL_NODE=0`` skips them on a machine that could; the node is shared
by every test of a session and started by the first one that needs it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
POSTGRES_IMAGE_DIR = REPO_ROOT / "tests" / "support" / "postgres-image"
NODE_IP = "198.51.100.10"
POD_CIDR = "10.244.0.0/24"
INGRESS_URL = f"http://{NODE_IP}"
INGRESS_CLASS = "traefik"

T = TypeVar("T")


class Unavailable(Exception):
    """This machine cannot run the node; the message says why (a skip reason)."""


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_hack(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own scripts, fixed arguments
        [str(HACK_DIR / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
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

    def load_image(self, image: str) -> None:
        """The counterpart of ``kind load docker-image``: dockerd → the node's containerd."""
        load = run_hack("real-node", "load-image", image)
        if load.returncode != 0:
            raise AssertionError(
                f"hack/real-node load-image {image} failed:\n{load.stdout}\n{load.stderr}"
            )


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


def unavailable_reason() -> str | None:
    if os.environ.get("BHIV_TEST_REAL_NODE") == "0":
        return "real node: BHIV_TEST_REAL_NODE=0"
    check = run_hack("real-node", "check", timeout=120)
    if check.returncode == 0:
        return None
    return "real node: " + "; ".join(
        line.removeprefix("real-node: cannot run here: ")
        for line in check.stderr.splitlines()
        if line.strip()
    )


@contextmanager
def _one_session_at_a_time(timeout: float = 1800) -> Iterator[None]:
    """The node has fixed addresses, ports and state: one test session uses it at a
    time. Another session's run (up, tests, down) is waited for, not joined."""
    cache = Path(os.environ.get("BHIV_CACHE_DIR", Path.home() / ".cache" / "bhiv"))
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "realnode.session.lock").open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"another test session has used the real node for over {timeout:.0f}s "
                        f"({lock.name})"
                    ) from None
                time.sleep(2)
        yield


@contextmanager
def running_node() -> Iterator[RealNode]:
    """``hack/real-node up`` … ``down``; raises Unavailable when the machine cannot."""
    reason = unavailable_reason()
    if reason:
        raise Unavailable(reason)
    with _one_session_at_a_time(), _up_and_down() as node:
        yield node


@contextmanager
def _up_and_down() -> Iterator[RealNode]:
    keep = os.environ.get("BHIV_TEST_KEEP_REAL_NODE") == "1"
    if not keep:
        # Whatever a session that died left running (we hold the session lock), whole
        # or in part: its releases and Ingresses would share the node with ours.
        # Start from a fresh cluster (down is quick when nothing runs).
        down = run_hack("real-node", "down")
        if down.returncode != 0:
            raise AssertionError(
                f"hack/real-node down (a stale node) failed:\n{tail(down.stdout + down.stderr)}"
            )
    up = run_hack("real-node", "up")
    if up.returncode != 0:
        down = run_hack("real-node", "down")
        raise AssertionError(
            f"hack/real-node up failed:\n{tail(up.stdout)}\n{tail(up.stderr)}\n"
            f"(down: exit {down.returncode}: {tail(down.stdout + down.stderr, 10)})"
        )
    bin_dir = Path(run_hack("k8s-tools", "--print-bin-dir").stdout.strip())
    kubeconfig = Path(run_hack("real-node", "kubeconfig").stdout.strip())
    try:
        yield RealNode(kubeconfig=kubeconfig, bin_dir=bin_dir)
    finally:
        if not keep:
            down = run_hack("real-node", "down")
            assert down.returncode == 0, (
                f"hack/real-node down left something behind:\n{down.stdout}\n{down.stderr}"
            )


@contextmanager
def dockerd() -> Iterator[None]:
    """dockerd for building and saving images; stopped again if this started it."""
    started = run_hack("docker", "status").returncode != 0
    if started:
        up = run_hack("docker", "up")
        if up.returncode != 0:
            # Another session may have started one at the same moment: use it, not own it.
            if run_hack("docker", "status").returncode != 0:
                raise AssertionError(f"hack/docker up failed:\n{tail(up.stdout + up.stderr)}")
            started = False
    try:
        yield
    finally:
        if started:
            run_hack("docker", "down")


def build_image(tag: str) -> None:
    build = run_hack("build-image", "--tag", tag, timeout=1800)
    if build.returncode != 0:
        raise AssertionError(f"hack/build-image failed:\n{tail(build.stdout + build.stderr)}")


def build_postgres_image(tag: str) -> None:
    """tests/support/postgres-image (the official postgres image's contract, from
    Debian's packages) on the project's local Debian base; the node cannot pull."""
    base = run_hack("build-image", "--print-base", timeout=1800)
    if base.returncode != 0:
        raise AssertionError(f"hack/build-image --print-base failed:\n{tail(base.stderr)}")
    with tempfile.TemporaryDirectory() as context:
        for name in ("Dockerfile", "entrypoint.sh"):
            shutil.copy2(POSTGRES_IMAGE_DIR / name, Path(context) / name)
        # apt may need the host's CA bundle (a TLS-intercepting proxy); empty: none.
        bundle = Path(os.environ.get("BHIV_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
        ca = Path(context) / "ca-certificates.crt"
        ca.write_bytes(bundle.read_bytes() if bundle.is_file() else b"")
        build = subprocess.run(  # noqa: S603
            ["docker", "build", "--network", "host", "--force-rm",  # noqa: S607
             "--build-arg", f"BASE_IMAGE={base.stdout.strip()}", "--tag", tag, context],
            capture_output=True, text=True, timeout=1800, check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
    if build.returncode != 0:
        raise AssertionError(f"building {tag} failed:\n{tail(build.stdout + build.stderr)}")
