"""Workflow definitions: steps forming a DAG, validated before they are stored.

The shape follows Temporal's activity options (``timeout_seconds``, a retry
policy with ``initial_seconds``, ``backoff_coefficient``, ``max_seconds``,
``max_attempts``) and Airflow's ``needs``-style dependencies.
"""

from __future__ import annotations

import graphlib
import json
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from bhiv.agents import expressions
from bhiv.agents.settings import CALLABLE_SERVICES
from bhiv.core.backoff import delay_after, exponential
from bhiv.core.fields import StorableText

StepId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,99}$")]
Expr = Annotated[str, StringConstraints(min_length=1, max_length=2000), StorableText]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
ServiceName = Literal["logistics", "crm", "llm-query", "integrations"]
assert set(ServiceName.__args__) == set(CALLABLE_SERVICES)  # type: ignore[attr-defined]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Spec):
    max_attempts: int = Field(1, ge=1, le=20, description="Attempts in all, the first included.")
    initial_seconds: float = Field(1.0, gt=0, le=3600, description="Wait after the first failure.")
    backoff_coefficient: float = Field(
        2.0, ge=1, le=10, description="Each wait is this many times the previous."
    )
    max_seconds: float = Field(60.0, gt=0, le=86_400, description="Longest wait between attempts.")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        policy = exponential(self.initial_seconds, self.backoff_coefficient, self.max_seconds)
        return delay_after(policy, attempt)


class ServiceCall(_Spec):
    service: ServiceName = Field(description="The BHIV service to call.", examples=["logistics"])
    method: Method = Field("POST", examples=["POST"])
    path: Annotated[
        str, StringConstraints(pattern=r"^/[^\r\n]*$", max_length=500), StorableText
    ] = Field(
        description="Path on the service; may hold {{ expressions }}.",
        examples=["/shipments/{{ steps.shipment.output.id }}"],
    )
    params: dict[str, Any] | None = Field(None, description="Query parameters (a template).")
    body: Any = Field(None, description="JSON body (a template).")


# A signal's name, as it appears in POST /runs/{id}/signals/{name}.
SIGNAL_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
SignalName = Annotated[str, StringConstraints(pattern=SIGNAL_NAME_PATTERN)]


class ConflictLookup(_Spec):
    call: ServiceCall = Field(description="Made instead when the step's call answers 409.")
    output: Any = Field(
        "{{ response }}",
        description="The step's output, a template over `response` (the lookup's answer); null: the step fails.",
    )


class Step(_Spec):
    id: StepId = Field(description="Unique within the workflow.", examples=["shipment"])
    type: Literal["service", "agent", "condition", "set", "wait"] = Field(examples=["service"])
    needs: list[StepId] = Field(
        default_factory=list, max_length=50, description="Steps that must finish first."
    )
    when: Expr | None = Field(
        None, description="Run only if this expression is true; otherwise skipped."
    )
    timeout_seconds: float = Field(
        30.0, gt=0, le=86_400, description="Per attempt (agent steps: the whole task)."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    on_error: Literal["fail", "continue", "compensate"] = Field(
        "fail",
        description="fail: the run fails; continue: the step is marked failed and the run goes on; "
        "compensate: completed steps' compensations run in reverse order, then the run ends compensated.",
    )
    # service
    call: ServiceCall | None = Field(None, description="type=service: the call.")
    until: Expr | None = Field(
        None,
        description="type=service: poll (every poll_seconds, within timeout) until this is true of `response`.",
    )
    poll_seconds: float = Field(1.0, gt=0, le=3600)
    compensate: ServiceCall | None = Field(
        None,
        description="Undo this step (saga): a service call that may refer to the step's own "
        "output (a service step's answer, an agent step's task result).",
    )
    on_conflict: ConflictLookup | None = Field(
        None,
        description="type=service: create-or-get. When the call answers 409 (e.g. it is repeated after a "
        "restart and the first attempt did create the resource), look the resource up instead.",
    )
    # agent
    capability: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,99}$")] | None = None
    payload: Any = Field(None, description="type=agent: the task payload (a template).")
    priority: int = Field(0, ge=-100, le=100)
    wait_for_agent: bool = Field(
        False,
        description="type=agent: queue the task even when no registered agent has the capability "
        "yet (otherwise the step fails at once, saying so).",
    )
    # condition / set
    expression: Expr | None = Field(None, description="type=condition: the boolean output.")
    fail_message: Annotated[str, StringConstraints(max_length=500), StorableText] | None = Field(
        None,
        description="type=condition: fail the step (not retried) with this message when the expression is false.",
    )
    value: Any = Field(None, description="type=set: the output (a template).")
    # wait
    seconds: float | None = Field(
        None,
        ge=0,
        le=30 * 86_400,
        description="type=wait: how long; with `signal`, how long to wait for it before the step "
        "fails (none: as long as it takes).",
    )
    signal: SignalName | None = Field(
        None,
        description="type=wait: wait for this signal (POST /runs/{id}/signals/{name}); the step's "
        "output is the signal's payload. A signal sent before the step is reached is kept for it.",
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> Step:
        required = {
            "service": "call",
            "agent": "capability",
            "condition": "expression",
        }
        if self.type == "wait" and self.seconds is None and self.signal is None:
            raise ValueError("a wait step needs `seconds`, `signal`, or both")
        if self.signal is not None and self.type != "wait":
            raise ValueError("only wait steps can wait for a signal")
        need = required.get(self.type)
        if need and getattr(self, need) is None:
            raise ValueError(f"a {self.type} step needs `{need}`")
        if self.compensate is not None and self.type not in ("service", "agent"):
            raise ValueError("only service and agent steps can have a compensation")
        if self.on_conflict is not None and self.type != "service":
            raise ValueError("only service steps can have on_conflict")
        return self


def dag_problem(steps: list[Step]) -> tuple[str, str] | None:
    """The first thing wrong with ``steps`` as a DAG, as (field, message), or None."""
    seen: set[str] = set()
    for i, step in enumerate(steps):
        if step.id in seen:
            return f"steps.{i}.id", f"duplicate step id {step.id!r}"
        seen.add(step.id)
    graph: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        for dep in step.needs:
            if dep not in seen:
                return f"steps.{i}.needs", f"unknown step {dep!r}"
        graph[step.id] = step.needs
        checks: list[tuple[str, Any, bool]] = [
            ("when", step.when, False),
            ("until", step.until, False),
            ("expression", step.expression, False),
            ("value", step.value, True),
            ("payload", step.payload, True),
            ("call", step.call and step.call.model_dump(), True),
            ("compensate", step.compensate and step.compensate.model_dump(), True),
            ("on_conflict", step.on_conflict and step.on_conflict.model_dump(), True),
        ]
        for field, value, is_template in checks:
            try:
                if is_template:
                    expressions.check_template(value)
                elif value:
                    expressions.check(value)
            except expressions.ExpressionError as exc:
                return f"steps.{i}.{field}", str(exc)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return "steps", f"steps form a cycle: {' -> '.join(exc.args[1])}"
    return None


class WorkflowSpec(_Spec):
    steps: list[Step] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _dag(self) -> WorkflowSpec:
        if problem := dag_problem(self.steps):
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return self

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


class BuiltinWorkflow(WorkflowSpec):
    name: Name
    version: int = Field(ge=1)
    description: str | None = None


def builtin_workflows() -> list[BuiltinWorkflow]:
    """The definitions shipped in ``bhiv/agents/workflows/*.json``."""
    folder = resources.files("bhiv.agents") / "workflows"
    found = [
        BuiltinWorkflow.model_validate(json.loads(entry.read_text()))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    ]
    return found
