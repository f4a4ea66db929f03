"""The chart's monitoring resources (values `metrics.*`), checked offline: rendered only
when enabled, valid against the Prometheus Operator's own CRD schemas (kubeconform), and
every PromQL expression in the alerts and the dashboard accepted by promtool, with
`promtool test rules` firing and not firing each alert. Needs helm, kubeconform,
promtool and the CRDs from hack/k8s-tools; no API server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.chart.conftest import CHART, write_cluster_schemas
from tests.cluster.conftest import HACK_DIR, REPO_ROOT
from tests.support.commands import run_tool

HERE = Path(__file__).resolve().parent
RULES_TEST = HERE / "monitoring-rules-test.yaml"
ENABLED = (
    "--set=metrics.serviceMonitor.enabled=true",
    "--set=metrics.prometheusRule.enabled=true",
    "--set=metrics.dashboard.enabled=true",
)
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Every alert the chart ships; docs/observability.md has a runbook for each.
ALERTS = {
    "BhivModuleNotReady",
    "BhivOperatorReconcileErrors",
    "BhivDependencyCycle",
    "BhivGatewayBreakerOpen",
    "BhivGateway5xxRatioHigh",
    "BhivWorkflowFailureRatioHigh",
    "BhivWebhookDeadLettersGrowing",
    "BhivOutboxBacklogOld",
}


class CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare `=` (an enum value in the CRDs: relabel actions, matchers) as
    YAML 1.1's unsupported `value` tag; YAML 1.2, which the API server speaks, has none."""


CrdLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:value"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@pytest.fixture(scope="module")
def tools() -> dict[str, Path]:
    out = subprocess.run(
        [str(HACK_DIR / "k8s-tools"), "--print-bin-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    bin_dir = Path(out)
    found = {name: bin_dir / name for name in ("helm", "kubeconform", "promtool")}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    crds = bin_dir.parent / "share" / "prometheus-operator-crds"
    if not crds.is_dir():
        missing.append("share/prometheus-operator-crds")
    if missing:
        pytest.skip(f"{', '.join(missing)} not in {bin_dir}; build them with `hack/k8s-tools`")
    return {**found, "crds": crds}


def render(tools: dict[str, Path], tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    home = tmp_path / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    out = run_tool(
        [str(tools["helm"]), "template", "mon", str(CHART), "--namespace=shop", *args],
        env=env,
        shown_as="helm",
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def is_monitoring(doc: dict[str, Any]) -> bool:
    return doc["kind"] in MONITORING_KINDS or (
        doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")
    )


def promtool(tools: dict[str, Path], *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [str(tools["promtool"]), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_nothing_renders_by_default(tools: dict[str, Path], tmp_path: Path) -> None:
    docs = render(tools, tmp_path)
    assert [d["kind"] for d in docs if is_monitoring(d)] == []


def test_enabled_resources_pass_kubeconform(tools: dict[str, Path], tmp_path: Path) -> None:
    docs = [d for d in render(tools, tmp_path, *ENABLED) if is_monitoring(d)]
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["bhiv-core.json"])

    crds = [
        doc
        for path in sorted(tools["crds"].glob("*.yaml"))
        for doc in yaml.load_all(path.read_text(), Loader=CrdLoader)
        if doc
    ]
    # No API server here: the CRDs' own schemas, with a metadata schema of the fields
    # the chart sets (kept strict, so a misspelt one still fails).
    meta = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    openapi = {"definitions": {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": meta}}
    (tmp_path / "schemas").mkdir()
    schemas = write_cluster_schemas(openapi, crds, tmp_path / "schemas")
    manifest = tmp_path / "monitoring.yaml"
    manifest.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] in MONITORING_KINDS]))
    run_tool(
        [
            str(tools["kubeconform"]),
            "-strict",
            "-summary",
            "-schema-location",
            str(schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            str(manifest),
        ],
        shown_as="kubeconform",
    )


def rule_groups(tools: dict[str, Path], tmp_path: Path) -> list[dict[str, Any]]:
    docs = render(tools, tmp_path, "--set=metrics.prometheusRule.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_alert_rules_check_and_each_fires_and_stays_quiet(
    tools: dict[str, Path], tmp_path: Path
) -> None:
    groups = rule_groups(tools, tmp_path)
    assert {r["alert"] for g in groups for r in g["rules"]} == ALERTS
    work = tmp_path / "rules"
    work.mkdir()
    (work / "checked.yaml").write_text(yaml.safe_dump({"groups": groups}))
    promtool(tools, "check", "rules", "--lint-fatal", "checked.yaml", cwd=work)

    for group in groups:
        for r in group["rules"]:
            r.pop("annotations", None)
    (work / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(RULES_TEST, work / "tests.yaml")
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert tested == ALERTS, "every alert needs series that fire it"
    promtool(tools, "test", "rules", "tests.yaml", cwd=work)


def test_dashboard_queries_parse(tools: dict[str, Path], tmp_path: Path) -> None:
    dashboard = json.loads((CHART / "files" / "dashboards" / "bhiv-core.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    # Grafana's variables become what Grafana substitutes; then each query is a
    # recording rule, which promtool parses as PromQL.
    rules = [
        {
            "record": f"dashboard:panel_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$namespace", "shop"),
        }
        for i, e in enumerate(exprs)
    ]
    work = tmp_path / "dashboard"
    work.mkdir()
    (work / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    promtool(tools, "check", "rules", "dashboard.yaml", cwd=work)


def test_every_metric_queried_is_exported(tools: dict[str, Path], tmp_path: Path) -> None:
    """No alert or panel on a metric nothing exports: each name is in src/bhiv."""
    groups = rule_groups(tools, tmp_path)
    text = json.dumps(groups) + (CHART / "files" / "dashboards" / "bhiv-core.json").read_text()
    source = "".join(p.read_text() for p in (REPO_ROOT / "src" / "bhiv").rglob("*.py"))
    names = {
        re.sub(r"_(total|bucket|count|sum)$", "", m) for m in re.findall(r"bhiv_[a-z_]+", text)
    }
    names.discard("bhiv_service")  # the target label the ServiceMonitor adds
    assert names
    missing = sorted(n for n in names if f'"{n}"' not in source)
    assert missing == []
