"""Workflow definitions: the DAG rules and the shipped definitions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bhiv.agents.definitions import Step, WorkflowSpec, builtin_workflows, dag_problem
from bhiv.agents.models import StepStatus
from bhiv.agents.runs import satisfied


def steps(*raw: dict) -> list[Step]:
    return [Step.model_validate(s) for s in raw]


def test_a_valid_dag_has_no_problem() -> None:
    assert (
        dag_problem(
            steps(
                {"id": "a", "type": "set", "value": 1},
                {"id": "b", "type": "wait", "seconds": 1, "needs": ["a"]},
                {"id": "c", "type": "set", "value": 2, "needs": ["a", "b"]},
            )
        )
        is None
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([{"id": "a", "type": "set"}, {"id": "a", "type": "set"}], "steps.1.id"),
        ([{"id": "a", "type": "set", "needs": ["z"]}], "steps.0.needs"),
        (
            [
                {"id": "a", "type": "set", "needs": ["b"]},
                {"id": "b", "type": "set", "needs": ["a"]},
            ],
            "steps",
        ),
        ([{"id": "a", "type": "set", "when": "x +"}], "steps.0.when"),
        (
            [{"id": "a", "type": "service", "call": {"service": "crm", "path": "/x/{{ y. }}"}}],
            "steps.0.call",
        ),
    ],
)
def test_dag_problems_name_the_field(raw: list[dict], field: str) -> None:
    problem = dag_problem(steps(*raw))
    assert problem is not None and problem[0] == field
    with pytest.raises(ValidationError):
        WorkflowSpec.model_validate({"steps": raw})


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "a", "type": "service"},
        {"id": "a", "type": "agent"},
        {"id": "a", "type": "wait"},
        {"id": "a", "type": "condition"},
        {"id": "a", "type": "set", "compensate": {"service": "crm", "path": "/x"}},
        {"id": "A", "type": "set"},
        {"id": "a", "type": "service", "call": {"service": "gateway", "path": "/x"}},
        {"id": "a", "type": "set", "retry": {"max_attempts": 0}},
        {"id": "a", "type": "set", "surprise": 1},
        {"id": "a", "type": "set", "on_conflict": {"call": {"service": "crm", "path": "/x"}}},
    ],
)
def test_step_shapes_are_checked(raw: dict) -> None:
    with pytest.raises(ValidationError):
        Step.model_validate(raw)


def test_shipped_workflows_are_valid_and_distinct() -> None:
    shipped = builtin_workflows()
    names = [w.name for w in shipped]
    assert sorted(names) == [
        "ai-agent-task",
        "customer-order-processing",
        "external-integration-sync",
        "inventory-reorder",
        "multi-service-data-flow",
    ]
    order = next(w for w in shipped if w.name == "customer-order-processing")
    assert (
        order.step("shipment").compensate is not None
        and order.step("notify").on_error == "compensate"
    )


def test_which_finished_dependencies_let_dependants_start() -> None:
    fail, cont = Step(id="a", type="set"), Step(id="a", type="set", on_error="continue")
    assert satisfied(StepStatus.succeeded, fail) and satisfied(StepStatus.skipped, fail)
    assert not satisfied(StepStatus.failed, fail) and satisfied(StepStatus.failed, cont)
