"""hack/generate: every table and schema derived from the service catalog is current,
and a new service in the catalog reaches all of them with one command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bhiv import catalog
from bhiv.cli.main import load_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# What the generator reads and writes; nothing else is copied.
TREE = (
    "hack/generate",
    "src/bhiv/__init__.py",
    "src/bhiv/catalog.py",
    "src/bhiv/kube.py",  # bhiv.operator takes GROUP, VERSION, PLURAL from it
    "src/bhiv/operator/__init__.py",
    "src/bhiv/operator/security.py",
    "charts/bhiv",
    "manifests",
    "README.md",
    "docs/helm.md",
)
BILLING = """\
        ServiceEntry(
            name="billing",
            port=8006,
            prefix="/api/billing",
            stage=3,
            app_factory="bhiv.billing.service:create_app",
            summary="invoices and payments",
            guide="docs/billing.md",
        ),
"""


def generate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "hack/generate"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for part in TREE:
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return tmp_path


def test_generated_files_are_current() -> None:
    result = generate(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_check_names_a_file_edited_by_hand(copy: Path) -> None:
    sample = copy / "manifests/samples/crm.yaml"
    sample.write_text(sample.read_text().replace("replicas: 1", "replicas: 2"))
    result = generate(copy, "--check")
    assert result.returncode == 1
    assert "manifests/samples/crm.yaml" in result.stderr
    assert sample.read_text().count("replicas: 2") == 1, "--check must change nothing"


def test_a_seventh_service_reaches_every_table_and_schema(copy: Path) -> None:
    catalog = copy / "src/bhiv/catalog.py"
    text = catalog.read_text()
    gateway = text.index('        ServiceEntry(\n            name="gateway"')
    catalog.write_text(text[:gateway] + BILLING + text[gateway:])

    result = generate(copy)
    assert result.returncode == 0, result.stderr
    assert generate(copy, "--check").returncode == 0

    helpers = (copy / "charts/bhiv/templates/_catalog.tpl").read_text()
    assert '"billing": {"port": 8006, "stage": 3' in helpers
    assert '["logistics", "crm", "billing"]' in helpers
    for crd in ("manifests/crd", "charts/bhiv/crds"):
        spec = yaml.safe_load((copy / crd / "bhiv.io_bhivmodules.yaml").read_text())
        props = spec["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "properties"
        ]
        assert "billing" in props["service"]["enum"]
        assert "billing 8006" in props["port"]["description"]
    values = yaml.safe_load((copy / "charts/bhiv/values.yaml").read_text())
    assert values["services"]["billing"]["enabled"] is True
    assert "database" in values["services"]["billing"]
    schema = json.loads((copy / "charts/bhiv/values.schema.json").read_text())
    assert schema["properties"]["services"]["properties"]["billing"] == {"$ref": "#/$defs/service"}
    sample = yaml.safe_load((copy / "manifests/samples/billing.yaml").read_text())
    assert sample["spec"]["service"] == "billing"
    assert sample["spec"]["dependsOn"] == ["llm-query"]
    # The next stage now waits for billing too.
    agents = yaml.safe_load((copy / "manifests/samples/agent-orchestration.yaml").read_text())
    assert agents["spec"]["dependsOn"] == ["logistics", "crm", "billing"]
    kustomization = yaml.safe_load((copy / "manifests/kustomization.yaml").read_text())
    assert "samples/billing.yaml" in kustomization["configMapGenerator"][0]["files"]
    assert (
        "| billing | `bhiv.billing` | 8006 | /api/billing | 3 | invoices and payments |"
        in (copy / "README.md").read_text()
    )
    assert "| 3 | 3 | logistics, crm, billing |" in (copy / "docs/helm.md").read_text()


def test_the_chart_renders_a_seventh_service(copy: Path) -> None:
    helm = (
        Path(
            subprocess.run(
                [str(ROOT / "hack/k8s-tools"), "--print-bin-dir"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        / "helm"
    )
    if not helm.exists():
        pytest.skip("helm is not built (make tools)")
    catalog = copy / "src/bhiv/catalog.py"
    text = catalog.read_text()
    gateway = text.index('        ServiceEntry(\n            name="gateway"')
    catalog.write_text(text[:gateway] + BILLING + text[gateway:])
    assert generate(copy).returncode == 0

    chart = str(copy / "charts/bhiv")
    lint = subprocess.run([helm, "lint", "--strict", chart], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run(
        [helm, "template", "t", chart], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    modules = {d["metadata"]["name"]: d for d in docs if d["kind"] == "BhivModule"}
    assert modules["billing"]["spec"]["dependsOn"] == ["llm-query"]
    assert modules["billing"]["spec"]["database"]["secretRef"]["key"] == "billing"
    assert modules["agent-orchestration"]["spec"]["dependsOn"] == ["logistics", "crm", "billing"]
    # The install waits for stage 3 as a whole, billing included.
    waits = [
        d["spec"]["template"]["spec"]["containers"][0]["args"]
        for d in docs
        if d["kind"] == "Job"
        and "wait-modules" in d["spec"]["template"]["spec"]["containers"][0].get("args", [])
    ]
    assert any(args[-3:] == ["logistics", "crm", "billing"] for args in waits), waits


@pytest.mark.parametrize("name", sorted(catalog.SERVICES))
def test_catalog_says_which_services_keep_data_as_their_specs_do(name: str) -> None:
    """The chart and the operator read `database` from the catalog; the service's own
    spec (does it have migrations?) is what really decides."""
    assert catalog.SERVICES[name].database == load_spec(name).has_database
