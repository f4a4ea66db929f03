"""`bhiv modules`: the dependency tree it prints (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from bhiv.cli.modules import dependency_tree

pytestmark = pytest.mark.unit


def module(
    name: str, *deps: str, ready: bool = True, reason: str = "AllReplicasReady"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"service": name, "dependsOn": list(deps)},
        "status": {
            "observedGeneration": 1,
            "replicasReady": "1/1" if ready else "0/1",
            "waitingFor": [] if ready else list(deps),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason,
                    "message": "",
                }
            ],
        },
    }


def test_the_seed_order_as_a_tree() -> None:
    lines = dependency_tree(
        [
            module("gateway", "agent-orchestration", ready=False, reason="WaitingForDependencies"),
            module("agent-orchestration", "logistics", "crm"),
            module("crm", "llm-query"),
            module("logistics", "llm-query"),
            module("llm-query", "integrations"),
            module("integrations"),
        ]
    )
    assert lines == [
        "integrations [integrations]  Ready  1/1",
        "└── llm-query [llm-query]  Ready  1/1",
        "    ├── crm [crm]  Ready  1/1",
        "    │   └── agent-orchestration [agent-orchestration]  Ready  1/1",
        "    │       └── gateway [gateway]  WaitingForDependencies  0/1"
        "  (waiting for agent-orchestration)",
        "    └── logistics [logistics]  Ready  1/1",
        "        └── agent-orchestration  (above)",
    ]


def test_missing_dependencies_and_cycles_are_shown_not_lost() -> None:
    lines = dependency_tree(
        [
            module("shop", "billing", ready=False, reason="DependencyNotFound"),
            module("a", "b"),
            module("b", "a"),
        ]
    )
    assert lines[0] == "billing  not found"
    assert lines[1].startswith("└── shop [shop]  DependencyNotFound")
    assert lines[2:] == ["a [a]  Ready  1/1", "└── b [b]  Ready  1/1", "    └── a  (cycle)"]
