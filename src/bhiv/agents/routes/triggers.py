"""Triggers (CRUD and firings) and the endpoint the integrations service delivers
domain events to (public: a Standard Webhooks signature proves the sender)."""

# No `from __future__ import annotations`: FastAPI must resolve these local types.

import json
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response, status
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.concurrency import run_in_threadpool

from bhiv.agents import schedules, starts, triggers
from bhiv.agents.definitions import Name
from bhiv.agents.models import Trigger, TriggerFiring, TriggerKind
from bhiv.agents.schemas import (
    FiringRead,
    TriggerCreate,
    TriggerEventAck,
    TriggerFields,
    TriggerRead,
    TriggerUpdate,
)
from bhiv.core import Page, PageParams, page_params, paginate, utcnow
from bhiv.core.auth import signed_webhook_operation
from bhiv.core.crud import created, deleted, get_or_404, unique_as_conflict
from bhiv.core.db import SessionDep
from bhiv.core.errors import Problem, field_problem
from bhiv.core.routing import service_router

router = service_router(tags=["triggers"])
# Included without the bearer-token check: the signature authenticates the sender.
receiver = service_router(tags=["triggers"])
TriggerId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Trigger ID.")]

trigger_page = page_params(
    {"id": Trigger.id, "name": Trigger.name, "next_fire_at": Trigger.next_fire_at},
    default_sort="name",
)
firing_page = page_params({"id": TriggerFiring.id}, default_sort="-id")
FIELDS = tuple(TriggerFields.model_fields)


def _checked(values: dict[str, Any]) -> TriggerFields:
    """The whole trigger, validated; a 422 naming the first bad field."""
    try:
        fields = TriggerFields.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"]) or "body"
        raise field_problem(name, error["msg"].removeprefix("Value error, ")) from None
    if problem := fields.kind_problem():
        raise field_problem(*problem)
    return fields


def read(trigger: Trigger) -> TriggerRead:
    """The trigger; a disabled schedule shows when it would fire next if switched on now."""
    answer = TriggerRead.model_validate(trigger)
    if trigger.kind is TriggerKind.schedule and not trigger.enabled and trigger.cron:
        answer.next_fire_at = schedules.next_after(
            trigger.cron, trigger.timezone or "UTC", utcnow()
        )
    return answer


def _apply(session: Session, trigger: Trigger, fields: TriggerFields) -> None:
    # The workflow (and version) must exist now; a 422 names `workflow` or `version`.
    starts.find_definition(session, fields.workflow, fields.version)
    schedule_changed = any(
        getattr(trigger, name, None) != getattr(fields, name)
        for name in ("enabled", "cron", "timezone", "kind")
    )
    for name in FIELDS:
        setattr(trigger, name, getattr(fields, name))
    if trigger.kind is not TriggerKind.schedule:
        trigger.timezone = None
    now = utcnow()
    if schedule_changed or trigger.next_fire_at is None:
        trigger.next_fire_at = triggers.first_fire_at(trigger, now)
        trigger.buffered_tick = None
    trigger.updated_at = now


def _changed(request: Request) -> None:
    """Triggers changed: the subscription keeper re-checks which events to receive."""
    keeper = getattr(request.app.state, "trigger_subscription", None)
    if keeper is not None:
        keeper.wake.set()
    request.app.state.engine.wake.set()


@router.post(
    "/triggers",
    response_model=TriggerRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a trigger",
    description="A trigger starts its workflow on a domain event, an inbound webhook, or a cron schedule; "
    "it is created disabled unless `enabled` is true.",
    responses={409: {"description": "The name is taken."}},
)
def create_trigger(
    body: TriggerCreate, request: Request, session: SessionDep, response: Response
) -> TriggerRead:
    fields = _checked(body.model_dump())
    trigger = Trigger(builtin=False)
    _apply(session, trigger, fields)
    with unique_as_conflict(session, "triggers", {"name": body.name}, "trigger"):
        answer = created(session, response, trigger, read, "/triggers")
    _changed(request)
    return answer


@router.get("/triggers", response_model=Page[TriggerRead], summary="List triggers")
def list_triggers(
    session: SessionDep,
    params: Annotated[PageParams, Depends(trigger_page)],
    kind: Annotated[TriggerKind | None, Query(description="Only this kind.")] = None,
    enabled: Annotated[bool | None, Query(description="Only enabled (or disabled) ones.")] = None,
    workflow: Annotated[
        Name | None, Query(description="Only those starting this workflow.")
    ] = None,
) -> Page[TriggerRead]:
    stmt = select(Trigger)
    if kind is not None:
        stmt = stmt.where(Trigger.kind == kind)
    if enabled is not None:
        stmt = stmt.where(Trigger.enabled.is_(enabled))
    if workflow is not None:
        stmt = stmt.where(Trigger.workflow == workflow)
    return paginate(session, stmt, params, read)


@router.get("/triggers/{trigger_id}", response_model=TriggerRead, summary="Get a trigger")
def get_trigger(trigger_id: TriggerId, session: SessionDep) -> TriggerRead:
    return read(get_or_404(session, Trigger, trigger_id, "Trigger"))


@router.patch(
    "/triggers/{trigger_id}",
    response_model=TriggerRead,
    summary="Change a trigger (e.g. switch it on with `enabled: true`)",
    description="The result is checked as a whole trigger. Changing a schedule's cron, time zone or "
    "enabled flag recomputes `next_fire_at` from now.",
)
def update_trigger(
    trigger_id: TriggerId, body: TriggerUpdate, request: Request, session: SessionDep
) -> TriggerRead:
    trigger = get_or_404(session, Trigger, trigger_id, "Trigger", lock=True)
    current = {name: getattr(trigger, name) for name in FIELDS}
    if current["timezone"] is None:
        current["timezone"] = "UTC"
    changes = body.model_dump(exclude_unset=True)
    for name in ("name", "enabled", "workflow", "input", "timezone", "catch_up", "overlap"):
        if name in changes and changes[name] is None:
            raise field_problem(name, "may not be null")
    fields = _checked({**current, **changes})
    _apply(session, trigger, fields)
    with unique_as_conflict(session, "triggers", {"name": fields.name}, "trigger"):
        session.flush()
    answer = read(trigger)
    session.commit()
    _changed(request)
    return answer


@router.delete(
    "/triggers/{trigger_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a trigger (its runs stay)",
)
def delete_trigger(trigger_id: TriggerId, request: Request, session: SessionDep) -> Response:
    answer = deleted(session, get_or_404(session, Trigger, trigger_id, "Trigger"))
    _changed(request)
    return answer


@router.get(
    "/triggers/{trigger_id}/firings",
    response_model=Page[FiringRead],
    summary="What a trigger fired on, newest first: each event or tick, and its run or why none started",
)
def list_firings(
    trigger_id: TriggerId, session: SessionDep, params: Annotated[PageParams, Depends(firing_page)]
) -> Page[FiringRead]:
    get_or_404(session, Trigger, trigger_id, "Trigger")
    return paginate(
        session,
        select(TriggerFiring).where(TriggerFiring.trigger_id == trigger_id),
        params,
        FiringRead.model_validate,
    )


@receiver.post(
    "/trigger-events",
    response_model=TriggerEventAck,
    summary="Receive a domain event from the integrations service (signed, no bearer token)",
    description="The integrations service delivers the events this service subscribed to here, signed with "
    "the subscription's Standard Webhooks secret (`BHIV_AGENTS_EVENTS_SECRET`, else derived from the shared "
    "JWT secret). Each matching enabled trigger starts one run per event ID, however often it is delivered.",
    responses={
        400: {"description": "The body is not an event."},
        401: {"description": "The signature does not match, or the timestamp is too old."},
    },
    openapi_extra=signed_webhook_operation(),
)
async def receive_event(request: Request) -> TriggerEventAck:
    body = await request.body()
    try:
        Webhook(request.app.state.settings.events_secret()).verify(
            body.decode("utf-8", "replace"), dict(request.headers), json_parse=False
        )
    except WebhookVerificationError as exc:
        raise Problem(
            401,
            f"The signature is not valid: {exc}.",
            kind="invalid-signature",
            headers={"WWW-Authenticate": 'Signature realm="bhiv-webhooks"'},
        ) from None
    try:
        envelope = json.loads(body)
    except ValueError:
        raise Problem(400, "The body is not JSON.", kind="bad-request") from None
    if not isinstance(envelope, dict):
        raise Problem(400, "The body is not a JSON object.", kind="bad-request")
    for name in ("id", "type"):
        if not isinstance(envelope.get(name), str) or not envelope[name]:
            raise field_problem(name, "required: a non-empty string", status=400)
    outcome = await run_in_threadpool(
        triggers.handle_event, request.app.state.db, envelope, utcnow()
    )
    if outcome.runs:
        request.app.state.engine.wake.set()
    return TriggerEventAck(runs=outcome.runs, duplicates=outcome.duplicates, errors=outcome.errors)
