from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bhiv.operator.bootstrap import BootstrapError, build_shared_secret, load_manifests

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"


def test_the_kustomization_bootstrap_files_load(tmp_path: Path) -> None:
    # The files manifests/kustomization.yaml puts in the bhiv-bootstrap ConfigMap.
    for path in [
        MANIFESTS / "operator" / "peering.yaml",
        *sorted((MANIFESTS / "samples").glob("*.yaml")),
    ]:
        shutil.copy(path, tmp_path / path.name)
    docs = load_manifests(tmp_path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["BhivModule"] * 6 + ["KopfPeering"]


def test_other_kinds_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n")
    with pytest.raises(BootstrapError, match=r"evil.yaml: Secret \(v1\) is not applied"):
        load_manifests(tmp_path)


def test_shared_secret_has_both_keys_random() -> None:
    one, two = build_shared_secret("s", "ns"), build_shared_secret("s", "ns")
    assert sorted(one["stringData"]) == ["BHIV_CREDENTIALS_KEY", "BHIV_JWT_SECRET"]
    assert len(set(one["stringData"].values())) == 2 and one["stringData"] != two["stringData"]
    assert all(len(v) >= 48 for v in one["stringData"].values())
