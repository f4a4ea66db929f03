"""Request and response bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    field_validator,
    model_validator,
)

from bhiv.agents import schedules
from bhiv.agents.definitions import Method, Name, ServiceName, Step
from bhiv.agents.expressions import ExpressionError, check_template
from bhiv.agents.models import (
    AgentKind,
    AgentStatus,
    CatchUp,
    Overlap,
    RunStatus,
    StepStatus,
    TaskStatus,
    TriggerKind,
)
from bhiv.core.fields import StorableText

Text = Annotated[str, StringConstraints(min_length=1, max_length=200), StorableText]
LongText = Annotated[str, StringConstraints(max_length=4000), StorableText]
Capability = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,99}$")]
AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
# A JSON object of bounded size is enforced by the framework's body limit.
Payload = dict[str, Any]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- agents ------------------------------------------------------------------------------


class AgentCreate(_In):
    name: AgentName = Field(description="Unique name.", examples=["summariser-1"])
    kind: AgentKind = Field(
        description="llm: calls the LLM service; http: POSTs tasks to `url`; service: calls a BHIV service; "
        "external: pulls tasks over this API.",
        examples=["llm"],
    )
    capabilities: list[Capability] = Field(
        min_length=1, max_length=50, description="What it can do.", examples=[["text_generation"]]
    )
    max_concurrency: int = Field(
        1, ge=1, le=1000, description="Tasks it runs at once.", examples=[4]
    )
    description: LongText | None = Field(None, examples=["Summarises support tickets"])
    model: Text | None = Field(
        None, description="llm: the model alias to ask for.", examples=["gpt-x"]
    )
    system_prompt: LongText | None = Field(None, description="llm: a system message sent first.")
    url: HttpUrl | None = Field(
        None,
        description="http: where tasks are POSTed (admin only).",
        examples=["http://127.0.0.1:9000/work"],
    )
    service: ServiceName | None = Field(
        None, description="service: the BHIV service to call.", examples=["crm"]
    )
    method: Method = Field("POST", description="service: the HTTP method.")
    path: Annotated[str, StringConstraints(pattern=r"^/\S{0,499}$")] | None = Field(
        None, description="service: the path called with the task payload.", examples=["/customers"]
    )

    @model_validator(mode="after")
    def _config_for_kind(self) -> AgentCreate:
        if self.kind == AgentKind.http and self.url is None:
            raise ValueError("an http agent needs `url`")
        if self.kind == AgentKind.service and (self.service is None or self.path is None):
            raise ValueError("a service agent needs `service` and `path`")
        return self

    def config(self) -> dict[str, Any]:
        if self.kind == AgentKind.llm:
            return {
                k: v for k, v in {"model": self.model, "system": self.system_prompt}.items() if v
            }
        if self.kind == AgentKind.http:
            return {"url": str(self.url)}
        if self.kind == AgentKind.service:
            return {"service": self.service, "method": self.method, "path": self.path}
        return {}


class AgentUpdate(_In):
    status: AgentStatus | None = Field(
        None, description="paused: takes no new tasks.", examples=["paused"]
    )
    capabilities: list[Capability] | None = Field(None, min_length=1, max_length=50)
    max_concurrency: int | None = Field(None, ge=1, le=1000)
    description: LongText | None = None


class AgentRead(_Read):
    id: int = Field(examples=[1])
    name: str
    kind: AgentKind
    status: AgentStatus
    online: bool = Field(description="Built-in agents always; external ones while they heartbeat.")
    capabilities: list[str]
    max_concurrency: int
    running: int = Field(description="Tasks it is running now.")
    config: dict[str, Any]
    description: str | None
    last_heartbeat_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


# --- tasks -------------------------------------------------------------------------------


class TaskCreate(_In):
    capability: Capability = Field(
        description="Routed to an agent with this capability.", examples=["text_generation"]
    )
    payload: Payload = Field(
        default_factory=dict,
        description="What the agent gets.",
        examples=[{"prompt": "Summarise: ..."}],
    )
    priority: int = Field(
        0, ge=-100, le=100, description="Higher first; waiting raises it (aging).", examples=[5]
    )
    max_attempts: int = Field(
        1, ge=1, le=20, description="Attempts before it fails (retryable errors, lost leases)."
    )
    timeout_seconds: float = Field(
        60.0, gt=0, le=86_400, description="Built-in agents: per attempt."
    )


class TaskRead(_Read):
    id: int = Field(examples=[1])
    capability: str
    priority: int
    status: TaskStatus
    payload: dict[str, Any]
    agent_id: int | None
    attempts: int
    max_attempts: int
    timeout_seconds: float
    lease_expires_at: dt.datetime | None
    result: Any | None
    error: str | None
    workflow_run_id: int | None
    step_id: str | None
    submitted_by: str | None
    enqueued_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class ClaimRequest(_In):
    max_tasks: int = Field(
        1, ge=1, le=100, description="At most this many (and no more than free capacity)."
    )
    lease_seconds: float | None = Field(
        None, ge=1, le=86_400, description="Default: the service's setting."
    )


class LeasedTask(TaskRead):
    lease_token: str = Field(description="Present it to heartbeat, complete or fail the task.")


class LeaseRef(_In):
    lease_token: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        examples=["0f" * 16]
    )


class HeartbeatRequest(LeaseRef):
    extend_seconds: float | None = Field(
        None, ge=1, le=86_400, description="New lease length from now."
    )


class CompleteRequest(LeaseRef):
    result: Any = Field(
        None, description="The task's result (any JSON).", examples=[{"summary": "..."}]
    )


class FailRequest(LeaseRef):
    error: LongText = Field(examples=["upstream refused the request"])
    retryable: bool = Field(False, description="Queue it again if attempts remain.")


# --- workflows ----------------------------------------------------------------------------


class WorkflowCreate(_In):
    name: Name = Field(
        description="Definitions with one name are versions of one workflow.",
        examples=["customer-order-processing"],
    )
    description: LongText | None = None
    steps: list[Step] = Field(
        min_length=1, max_length=100, description="The DAG; see docs/agents.md."
    )


class WorkflowRead(_Read):
    id: int
    name: str
    version: int
    description: str | None
    source: str = Field(description="builtin (shipped with the service) or api.")
    spec: dict[str, Any]
    created_at: dt.datetime


class RunCreate(_In):
    workflow: Name = Field(examples=["inventory-reorder"])
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="Default: the latest.")
    input: Payload = Field(default_factory=dict, description="Available to steps as `input`.")


class StepRead(_Read):
    step_id: str
    type: str
    status: StepStatus
    attempts: int
    output: Any | None
    error: str | None
    due_at: dt.datetime | None
    task_id: int | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    compensated_at: dt.datetime | None


class RunRead(_Read):
    id: int
    definition_id: int
    workflow: str
    version: int
    status: RunStatus
    input: dict[str, Any]
    error: str | None
    started_by: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    steps: list[StepRead] = Field(
        default_factory=list, description="Every step of the definition, in its order."
    )


class SignalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(
        None, description="The waiting step's output (any JSON).", examples=[{"approved": True}]
    )


class SignalRead(_Read):
    id: int
    run_id: int
    name: str
    payload: Any | None
    sent_by: str
    received_at: dt.datetime
    taken_by_step: str | None = Field(description="The wait step that took it; null: kept for one.")


class RunEventRead(_Read):
    id: int
    at: dt.datetime
    step_id: str | None
    kind: str = Field(examples=["step_succeeded"])
    detail: Any | None


# --- monitoring --------------------------------------------------------------------------


class Rates(BaseModel):
    succeeded: int
    failed: int
    success_rate: float | None = Field(
        description="succeeded / (succeeded + failed); null before any."
    )
    latency_avg_seconds: float | None
    latency_p95_seconds: float | None


class AgentStats(Rates):
    agent_id: int
    name: str
    running: int


class WorkflowStats(Rates):
    workflow: str
    running: int
    compensated: int


class QueueStats(BaseModel):
    capability: str
    queued: int
    running: int
    oldest_wait_seconds: float | None


class Overview(BaseModel):
    agents: list[AgentStats]
    workflows: list[WorkflowStats]
    queues: list[QueueStats]
    kind: Literal["overview"] = "overview"


# --- triggers ----------------------------------------------------------------------------

EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")]
SourceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Cron = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Zone = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class TriggerFields(_In):
    """Every field of a trigger; a PATCH is checked as the whole trigger it leaves behind."""

    name: Name = Field(description="Unique name.", examples=["low-stock-reorder"])
    description: LongText | None = None
    kind: TriggerKind = Field(
        description="event: a domain event delivered by Integrations; webhook: an inbound webhook from a named "
        "Integrations source; schedule: a cron expression.",
        examples=["event"],
    )
    enabled: bool = Field(False, description="A disabled trigger starts nothing.")
    workflow: Name = Field(examples=["inventory-reorder"])
    version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Default: the workflow's latest version at each start.",
    )
    input: Payload = Field(
        default_factory=dict,
        description="The run's input, a template over `event` (events and webhooks: `id`, `type`, `timestamp`, "
        "`source`, `data`) or `tick` (`at`, `local`) and `trigger` (`id`, `name`).",
        examples=[{"sku": "{{ event.data.sku }}"}],
    )
    event_type: EventType | None = Field(
        None, description="event: the type it starts on.", examples=["inventory.low_stock"]
    )
    source: SourceName | None = Field(
        None,
        description="webhook: the Integrations webhook source's name.",
        examples=["acme-payments"],
    )
    cron: Cron | None = Field(
        None,
        description="schedule: five fields, or six with seconds last (croniter).",
        examples=["0 2 * * *"],
    )
    timezone: Zone = Field("UTC", description="schedule: IANA time zone of the cron expression.")
    catch_up: CatchUp = Field(
        CatchUp.skip,
        description="schedule: after missed ticks (the service was down), skip them or run_once.",
    )
    overlap: Overlap = Field(
        Overlap.skip,
        description="schedule: a tick while the last run is active: skip it, allow a second run, or "
        "buffer_one tick until it ends.",
    )

    @field_validator("input")
    @classmethod
    def _template(cls, value: Payload) -> Payload:
        try:
            check_template(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else schedules.check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        schedules.zone(value)
        return value

    def kind_problem(self) -> tuple[str, str] | None:
        """(field, message) when a field is missing for the kind, or given for another kind."""
        required = {
            TriggerKind.event: "event_type",
            TriggerKind.webhook: "source",
            TriggerKind.schedule: "cron",
        }
        for kind, name in required.items():
            given = getattr(self, name) is not None
            if kind is self.kind and not given:
                return name, f"required for a {kind.value} trigger"
            if kind is not self.kind and given:
                return name, f"only for a {kind.value} trigger, not {self.kind.value}"
        return None


class TriggerCreate(TriggerFields):
    pass


class TriggerUpdate(_In):
    name: Name | None = None
    description: LongText | None = None
    enabled: bool | None = None
    workflow: Name | None = None
    version: int | None = Field(None, ge=1, le=2**31 - 1)
    input: Payload | None = None
    event_type: EventType | None = None
    source: SourceName | None = None
    cron: Cron | None = None
    timezone: Zone | None = None
    catch_up: CatchUp | None = None
    overlap: Overlap | None = None


class TriggerRead(_Read):
    id: int = Field(examples=[1])
    name: str
    description: str | None
    kind: TriggerKind
    enabled: bool
    workflow: str
    version: int | None
    input: Any
    event_type: str | None
    source: str | None
    cron: str | None
    timezone: str | None
    catch_up: CatchUp
    overlap: Overlap
    next_fire_at: dt.datetime | None = Field(description="schedule, enabled: the next tick (UTC).")
    buffered_tick: dt.datetime | None
    builtin: bool = Field(description="Shipped with BHIV (created disabled).")
    last_fired_at: dt.datetime | None
    last_run_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class FiringRead(_Read):
    id: int
    trigger_id: int
    dedup_key: str = Field(description="`event:<event id>` or `tick:<UTC time>`.")
    run_id: int | None
    error: str | None = Field(description="Why no run started, if none did.")
    at: dt.datetime


class TriggerEventAck(BaseModel):
    runs: list[int] = Field(description="Runs this delivery started.")
    duplicates: int = Field(
        description="Matching triggers that had started a run for this event already."
    )
    errors: list[str]
