"""bench/results.py: every run kept as JSON, the latest compared with the one before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import results


def test_each_run_is_kept_and_compared_with_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BHIV_BENCH_RESULTS", str(tmp_path))
    first = results.record("logistics", {"reads": {"requests_per_second": 500.0}}, {"health": 5000})
    second = results.record(
        "logistics", {"reads": {"requests_per_second": 750.0}}, {"health": 5000}
    )

    assert first != second and first.exists() and second.exists()
    latest = json.loads((tmp_path / "logistics.json").read_text())
    assert latest == json.loads(second.read_text())
    assert latest["figures"] == {"reads": {"requests_per_second": 750.0}}
    assert latest["baseline"] == {"health": 5000}
    assert latest["machine"]["cores"] >= 1

    capsys.readouterr()
    results.compare("logistics")
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["reads.requests_per_second"] == ["500.000", "750.000", "1.50x"]
    assert rows["baseline.health"] == ["5000.000", "5000.000", "1.00x"]
