"""Conditions and templates in workflow definitions, evaluated with simpleeval.

Expressions are Python-like (``steps.alerts.output[0].shortfall > 5``,
``len(x) > 0``, comprehensions) but run in simpleeval's sandbox: no imports, no
dunder attributes, no calls except the functions listed here, bounded powers
and string sizes. Never Python's ``eval``.

Names: ``input`` (the run's input), ``steps`` (``steps.<id>.output`` and
``steps.<id>.status``), ``run`` (``run.id``, ``run.workflow``). Dict keys read
as attributes (``input.order.reference``) unless they clash with a dict method
(``items``, ``keys``, ``values``, ``get``): write ``x['items']`` for those.

A template is any JSON value whose strings may hold ``{{ expression }}``: a string
that is exactly one expression becomes the expression's value (any JSON type);
otherwise each expression is formatted into the string.
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import re
import threading
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

TEMPLATE = re.compile(r"\{\{\s*(.+?)\s*\}\}")


class ExpressionError(ValueError):
    """An expression that does not parse or fails when evaluated."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


FUNCTIONS = {
    "len": len,
    "min": min,
    "max": max,
    "sum": sum,
    "abs": abs,
    "round": round,
    "sorted": sorted,
    "any": any,
    "all": all,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "now": _now,
}


def check(expression: str) -> None:
    """Raise :class:`ExpressionError` if ``expression`` does not parse or uses what the sandbox forbids.

    simpleeval refuses these when evaluating too; checking up front turns a run
    that would fail later into a 422 when the definition is stored.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {expression!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in FUNCTIONS
        ):
            raise ExpressionError(
                f"invalid expression {expression!r}: {node.func.id}() is not available; "
                f"functions: {', '.join(sorted(FUNCTIONS))}"
            )
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExpressionError(
                f"invalid expression {expression!r}: private attribute {node.attr!r}"
            )
        if isinstance(node, ast.Lambda | ast.NamedExpr | ast.Await | ast.Yield | ast.YieldFrom):
            raise ExpressionError(
                f"invalid expression {expression!r}: {type(node).__name__} is not allowed"
            )


# CPython 3.11's parser is not safe to run on several threads at once (gh-106905:
# "AST constructor recursion depth mismatch"), and steps render their templates on
# worker threads: expressions are parsed one at a time, each once.
_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2048)
def _parsed(expression: str) -> ast.AST:
    with _PARSE_LOCK:
        return EvalWithCompoundTypes.parse(expression)


def evaluate(expression: str, names: dict[str, Any]) -> Any:
    evaluator = EvalWithCompoundTypes(names=names, functions=FUNCTIONS)
    try:
        expression = expression.strip()
        return evaluator.eval(expression, _parsed(expression))
    except (
        InvalidExpression,
        SyntaxError,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        ZeroDivisionError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise ExpressionError(f"{expression!r}: {type(exc).__name__}: {exc}") from None


def render(template: Any, names: dict[str, Any]) -> Any:
    """``template`` with every ``{{ expression }}`` replaced by its value."""
    if isinstance(template, str):
        whole = TEMPLATE.fullmatch(template.strip())
        if whole and template.strip().count("{{") == 1:
            return evaluate(whole.group(1), names)
        return TEMPLATE.sub(lambda m: _text(evaluate(m.group(1), names)), template)
    if isinstance(template, dict):
        return {k: render(v, names) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, names) for v in template]
    return template


def check_template(template: Any) -> None:
    if isinstance(template, str):
        for match in TEMPLATE.finditer(template):
            check(match.group(1))
    elif isinstance(template, dict):
        for v in template.values():
            check_template(v)
    elif isinstance(template, list):
        for v in template:
            check_template(v)


def _text(value: Any) -> str:
    return "" if value is None else str(value)
