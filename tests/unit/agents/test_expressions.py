"""Conditions and templates: simpleeval's sandbox, never Python's eval."""

from __future__ import annotations

from typing import Any

import pytest

from bhiv.agents import expressions
from bhiv.agents.expressions import ExpressionError, check, evaluate, render

NAMES: dict[str, Any] = {
    "input": {
        "order": {
            "reference": "SO-1",
            "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}],
        }
    },
    "steps": {
        "find": {
            "status": "succeeded",
            "output": {"items": [{"id": 7, "email": "A@X.example"}], "total": 1},
        }
    },
    "run": {"id": 12},
}


def test_attribute_style_access_and_comprehensions() -> None:
    assert evaluate("input.order.reference", NAMES) == "SO-1"
    assert evaluate("sum([l['quantity'] for l in input.order.lines])", NAMES) == 5
    assert (
        evaluate("steps.find.output['items'][0].id", NAMES) == 7
    )  # 'items' clashes with dict.items
    assert (
        evaluate("str(steps.find.output['items'][0].email).lower() == 'a@x.example'", NAMES) is True
    )
    assert (
        evaluate("len(input.order.lines) > 1 and steps.find.status == 'succeeded'", NAMES) is True
    )


def test_render_keeps_types_for_whole_expressions_and_formats_mixed_strings() -> None:
    template = {
        "ref": "{{ input.order.reference }}",
        "n": "{{ run.id }}",
        "label": "run {{ run.id }} for {{ input.order.reference }}",
        "lines": "{{ input.order.lines }}",
        "fixed": [1, True, None],
    }
    assert render(template, NAMES) == {
        "ref": "SO-1",
        "n": 12,
        "label": "run 12 for SO-1",
        "lines": NAMES["input"]["order"]["lines"],
        "fixed": [1, True, None],
    }
    assert render("{{ run.id }}-{{ run.id }}", NAMES) == "12-12"
    assert render("{{ steps.find.output.get('missing') }}", NAMES) is None


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "input.__class__",
        "(lambda: 1)()",
        "1 +",
        "eval('1')",
    ],
)
def test_the_sandbox_refuses_at_definition_time(expression: str) -> None:
    with pytest.raises(ExpressionError):
        check(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "input.__class__.__mro__",
        "undefined_name + 1",
        "1 / 0",
        "input.order.nope",
        "'x' * 10**9",
    ],
)
def test_evaluation_errors_are_expression_errors(expression: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expression, NAMES)


def test_template_checks_reach_nested_values() -> None:
    with pytest.raises(ExpressionError):
        expressions.check_template({"a": ["ok {{ run.id }}", {"b": "{{ 1 + }}"}]})
    expressions.check_template({"a": ["ok {{ run.id }}", {"b": "{{ now() }}"}]})
