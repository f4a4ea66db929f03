"""Running a command-line tool from a test: its output captured, a failure reported
with the command and the tail of what it printed."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest


def run_tool(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    shown_as: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args``; with ``check``, fail the test (no traceback) when it exits non-zero.

    ``shown_as`` names the command in that report instead of ``args[0]`` (e.g. "helm"
    for a long cached path). Callers never put secrets in ``args``: they are printed.
    """
    result = subprocess.run(  # noqa: S603 - the callers' own tools, fixed arguments
        list(args), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        shown = " ".join([shown_as or args[0], *args[1:]])
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        pytest.fail(f"{shown} exited {result.returncode}:\n{output}", pytrace=False)
    return result
