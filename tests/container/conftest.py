"""Fixtures for the container tier: the real image, built from this tree and run by Docker.

Which engine:

* one that already answers (``docker version``) is used as it is and left running;
* otherwise ``hack/docker up`` installs Debian's docker.io if needed and starts
  dockerd by hand (no bridge, no iptables); this session stops it again at the
  end unless ``BHIV_TEST_KEEP_DOCKERD=1``.

Which image:

* ``BHIV_TEST_IMAGE`` set: that image, used as it is (it must exist locally);
* otherwise ``hack/build-image --tag bhiv-core:test``: a local Debian base
  (debootstrap, cached under ``$HOME/.cache/bhiv``) and the Dockerfile on top.

When no engine can be had (not root, no docker.io, dockerd refusing to start)
or no base image can be made, the tier is skipped with the reason. A Dockerfile
that fails to build is a failure, not a skip.

Every container runs with host networking, so tests reach it on 127.0.0.1;
each carries this session's label and is removed by the test that started it,
and again by label when the session ends.

Every test in this directory is marked ``container``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
CONTAINER_TESTS_DIR = Path(__file__).resolve().parent

TEST_IMAGE_TAG = "bhiv-core:test"
SESSION_LABEL = "io.bhiv.test-session"
SESSION_ID = uuid.uuid4().hex[:12]

# What the tier measured, for the terminal summary.
_FIGURES: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items; mark only the ones in this tier.
    for item in items:
        if CONTAINER_TESTS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.container)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("container image")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode == 0


@dataclass
class Docker:
    """The Docker CLI, talking to the engine this session uses."""

    started_here: bool

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
                + _tail(result.stderr or result.stdout)
            )
        return result

    def remove_session_containers(self) -> None:
        ids = self.run(
            "ps", "-aq", "--filter", f"label={SESSION_LABEL}={SESSION_ID}", check=False
        ).stdout.split()
        if ids:
            self.run("rm", "--force", "--volumes", *ids, check=False)


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """A Docker engine that answers; started by hack/docker when none does."""
    if not sys.platform.startswith("linux"):
        pytest.skip("container tier: needs Linux (hack/docker starts dockerd by hand)")
    if _docker_answers():
        engine = Docker(started_here=False)
    else:
        if os.geteuid() != 0:
            pytest.skip(
                "container tier: no Docker engine answers and starting one needs root "
                "(run hack/docker up as root)"
            )
        result = subprocess.run(
            [str(HACK_DIR / "docker"), "up"],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0 or not _docker_answers():
            pytest.skip(
                "container tier: could not start a Docker engine with hack/docker up:\n"
                + _tail(result.stderr)
            )
        engine = Docker(started_here=True)
    try:
        yield engine
    finally:
        engine.remove_session_containers()
        if engine.started_here and os.environ.get("BHIV_TEST_KEEP_DOCKERD") != "1":
            subprocess.run(
                [str(HACK_DIR / "docker"), "down"], capture_output=True, text=True, timeout=120
            )


@dataclass(frozen=True)
class Image:
    ref: str
    config: dict[str, Any] = field(repr=False)
    size_bytes: int = 0

    @property
    def labels(self) -> dict[str, str]:
        return self.config.get("Labels") or {}

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])


def _inspect(docker: Docker, ref: str) -> Image:
    data = json.loads(docker.run("image", "inspect", ref).stdout)[0]
    return Image(ref=ref, config=data["Config"], size_bytes=int(data["Size"]))


@pytest.fixture(scope="session")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The BHIV Core image: BHIV_TEST_IMAGE, or built from this tree now."""
    given = os.environ.get("BHIV_TEST_IMAGE")
    if given:
        if docker.run("image", "inspect", given, check=False).returncode != 0:
            pytest.fail(f"BHIV_TEST_IMAGE={given} does not exist in this Docker engine")
        given_image = _inspect(docker, given)
        _FIGURES.append(
            f"{given}: {given_image.size_bytes / 1e6:.0f} MB (given by BHIV_TEST_IMAGE, not built here)"
        )
        return given_image

    log = tmp_path_factory.mktemp("image") / "build.log"
    build_image = str(HACK_DIR / "build-image")
    # The base first: not being able to make one is this machine's limit (skip);
    # a Dockerfile that does not build on it is a failure.
    started = time.monotonic()
    base = subprocess.run(
        [build_image, "--print-base"], capture_output=True, text=True, timeout=900
    )
    if base.returncode != 0:
        pytest.skip(f"container tier: could not make the local base image:\n{_tail(base.stderr)}")
    base_seconds = time.monotonic() - started
    started = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(
            [build_image, "--tag", TEST_IMAGE_TAG],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    build_seconds = time.monotonic() - started
    if built.returncode != 0:
        pytest.fail(
            f"hack/build-image failed (exit {built.returncode}); end of {log}:\n"
            + _tail(log.read_text(), 60)
        )
    result = _inspect(docker, TEST_IMAGE_TAG)
    _FIGURES.append(
        f"{TEST_IMAGE_TAG}: {result.size_bytes / 1e6:.0f} MB on {base.stdout.strip()}; "
        f"base ready in {base_seconds:.0f} s, image built in {build_seconds:.0f} s (log {log})"
    )
    return result


# The flags every service container gets: what a restricted Kubernetes pod
# allows, and host networking so that the test reaches it on 127.0.0.1.
HARDENED_RUN_FLAGS: tuple[str, ...] = (
    "--network", "host",
    "--read-only",
    "--tmpfs", "/tmp",  # noqa: S108 - the container's own /tmp
    "--user", "10001:10001",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
)  # fmt: skip


@dataclass
class Container:
    docker: Docker
    name: str

    def running(self) -> bool:
        result = self.docker.run(
            "inspect", "--format", "{{.State.Running}}", self.name, check=False
        )
        return result.stdout.strip() == "true"

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        return json.loads(
            self.docker.run("inspect", "--format", "{{json .State}}", self.name).stdout
        )

    def remove(self) -> None:
        self.docker.run("rm", "--force", "--volumes", self.name, check=False)


@pytest.fixture
def start_container(docker: Docker, image: Image) -> Iterator[Any]:
    """``start_container(*args, env={...}, flags=...)`` runs the image detached;
    every container started through it is removed when the test ends."""
    started: list[Container] = []

    def start(
        *args: str, env: dict[str, str] | None = None, flags: Sequence[str] = HARDENED_RUN_FLAGS
    ) -> Container:
        name = f"bhiv-test-{SESSION_ID}-{uuid.uuid4().hex[:8]}"
        env_flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        container = Container(docker, name)
        started.append(container)
        docker.run(
            "run", "--detach", "--name", name, "--label", f"{SESSION_LABEL}={SESSION_ID}",
            *flags, *env_flags, image.ref, *args,
        )  # fmt: skip
        return container

    try:
        yield start
    finally:
        for container in started:
            container.remove()


@pytest.fixture
def run_once(docker: Docker, image: Image) -> Any:
    """``run_once(*args, entrypoint=None, flags=...)``: run the image to completion
    (``--rm``) and return the CompletedProcess."""

    def run(
        *args: str,
        entrypoint: str | None = None,
        flags: Sequence[str] = HARDENED_RUN_FLAGS,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--entrypoint", entrypoint] if entrypoint else []
        return docker.run(
            "run", "--rm", "--label", f"{SESSION_LABEL}={SESSION_ID}",
            *flags, *extra, image.ref, *args,
            check=False, timeout=timeout,
        )  # fmt: skip

    return run
