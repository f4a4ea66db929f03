"""Every benchmark's figures as JSON, so a change can be compared with the last run.

Each run writes ``<dir>/<bench>-<UTC time>.json`` and replaces ``<dir>/<bench>.json``
(the latest), where ``<dir>`` is ``$BHIV_BENCH_RESULTS`` or ``bench/results/`` (not
committed: figures belong to the machine that measured them). A file holds the
machine's core count, Python version, the commit, the baseline measured in the same
run and the figures, so ratios stay comparable across machines:

    {"bench": "logistics", "when": "...", "machine": {...}, "commit": "...",
     "baseline": {...}, "figures": {...}}

``python bench/results.py [bench]`` prints the latest file of each bench (or one)
beside the one before it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    return Path(os.environ.get("BHIV_BENCH_RESULTS") or ROOT / "bench" / "results")


def _commit() -> str | None:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def record(bench: str, figures: dict[str, Any], baseline: dict[str, Any] | None = None) -> Path:
    """Write one run's figures; returns the timestamped file's path (also printed)."""
    now = dt.datetime.now(dt.UTC)
    document = {
        "bench": bench,
        "when": now.isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "commit": _commit(),
        "baseline": baseline or {},
        "figures": figures,
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    stamped = folder / f"{bench}-{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z.json"
    stamped.write_text(text)
    (folder / f"{bench}.json").write_text(text)
    print(f"\nfigures written to {stamped}")  # noqa: T201
    return stamped


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        flat: dict[str, float] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix.rstrip("."): float(value)}
    return {}


def compare(bench: str) -> None:
    """Print the latest run of ``bench`` beside the run before it."""
    runs = sorted(results_dir().glob(f"{bench}-*.json"))
    if not runs:
        print(f"{bench}: no runs in {results_dir()}")  # noqa: T201
        return
    latest = json.loads(runs[-1].read_text())
    before = json.loads(runs[-2].read_text()) if len(runs) > 1 else None
    now_figures = _flatten({"baseline": latest["baseline"], **latest["figures"]})
    old_figures = _flatten({"baseline": before["baseline"], **before["figures"]}) if before else {}
    print(f"{bench}: {latest['when']} ({latest['commit']})", end="")  # noqa: T201
    print(f" vs {before['when']} ({before['commit']})" if before else " (first run)")  # noqa: T201
    for key, value in now_figures.items():
        old = old_figures.get(key)
        change = f"{value / old:8.2f}x" if old else ""
        shown = f"{old:12.3f}" if old is not None else " " * 12
        print(f"  {key:<48}{shown}{value:12.3f}{change}")  # noqa: T201


def main() -> None:
    benches = sys.argv[1:] or sorted(
        {p.stem.rsplit("-", 1)[0] for p in results_dir().glob("*-*.json")}
    )
    for bench in benches:
        compare(bench)


if __name__ == "__main__":
    main()
