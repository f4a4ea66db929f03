"""NetworkPolicies from the dependency graph (pure builders)."""

from __future__ import annotations

from typing import Any

import pytest

from bhiv.operator import builders
from bhiv.operator.graph import Node, reach, reach_of
from bhiv.operator.model import Module

pytestmark = pytest.mark.unit

SEED = {
    "integrations": Node((), True),
    "llm-query": Node(("integrations",), True),
    "logistics": Node(("llm-query",), True),
    "crm": Node(("llm-query",), True),
    "agent-orchestration": Node(("logistics", "crm"), True),
    "gateway": Node(("agent-orchestration",), True),
}


def module(name: str, service: str, **policy: Any) -> Module:
    body = {
        "metadata": {"name": name, "namespace": "shop", "uid": "u", "generation": 1},
        "spec": {"service": service, "image": "x", "networkPolicy": {"enabled": True, **policy}},
    }
    return Module.from_body(body)


def test_reach_is_transitive_both_ways() -> None:
    r = reach(SEED)
    assert r["logistics"].dependents == {"agent-orchestration", "gateway"}
    assert r["integrations"].dependents == set(SEED) - {"integrations"}
    assert r["agent-orchestration"].dependencies == {
        "logistics",
        "crm",
        "llm-query",
        "integrations",
    }
    assert r["gateway"].dependents == frozenset()
    assert all(reach_of(name, SEED) == r[name] for name in SEED)
    assert reach_of("absent", SEED).dependents == frozenset()


def test_a_module_accepts_its_dependents_the_gateway_and_monitoring_only() -> None:
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    m = module("logistics", "logistics", monitoring=monitoring)
    r = reach(SEED)["logistics"]
    policy = builders.build_network_policy(m, r.dependents, r.dependencies)
    assert policy is not None
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": builders.selector_labels(m)}
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    [rule] = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    dependents, gateway, scraper = rule["from"]
    assert dependents["podSelector"]["matchExpressions"][0]["values"] == [
        "agent-orchestration",
        "gateway",
    ]
    assert gateway["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert scraper == monitoring
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "BhivModule"


def test_the_gateway_accepts_its_namespace_and_its_ingress_controller() -> None:
    controller = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
    }
    policy = builders.build_network_policy(
        module("gateway", "gateway", ingressFrom=[controller]), frozenset(), frozenset()
    )
    assert policy is not None
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}, controller]


def test_restricted_egress_allows_dns_dependencies_and_cidrs() -> None:
    m = module("logistics", "logistics", egress={"restricted": True, "cidrs": ["10.1.2.0/24"]})
    r = reach(SEED)["logistics"]
    policy = builders.build_network_policy(m, r.dependents, r.dependencies)
    assert policy is not None
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, deps, cidrs = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert deps["to"][0]["podSelector"]["matchExpressions"][0]["values"] == [
        "integrations",
        "llm-query",
    ]
    assert cidrs == {"to": [{"ipBlock": {"cidr": "10.1.2.0/24"}}]}


def test_disabled_means_no_policy() -> None:
    body = {
        "metadata": {"name": "crm", "namespace": "shop", "uid": "u", "generation": 1},
        "spec": {"service": "crm", "image": "x"},
    }
    assert builders.build_network_policy(Module.from_body(body), frozenset(), frozenset()) is None
