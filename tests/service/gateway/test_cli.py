"""The gateway in the `bhiv` command: it has no database, so migrations pass it by."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_migrate_skips_the_gateway(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
    env["BHIV_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "bhiv", "migrate", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "gateway has no database" in result.stderr
    assert not (tmp_path / "gateway.db").exists()
