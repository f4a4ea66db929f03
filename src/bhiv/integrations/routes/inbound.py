"""Inbound webhooks: sources (admin) with their received messages, and the public
endpoint senders post to.

``POST /webhooks/{source}`` carries no bearer token: the sender proves itself
with a Standard Webhooks signature made with the source's secret. It verifies,
deduplicates on ``webhook-id`` and stores the raw body, then answers; nothing
slow happens before the answer, so senders do not time out and retry.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Response, status
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.auth import signed_webhook_operation
from bhiv.core.crud import apply_patch, created, deleted, get_or_404, unique_as_conflict
from bhiv.core.db import Database, SessionDep
from bhiv.core.errors import Problem, field_problem, not_found
from bhiv.core.fields import StorableText
from bhiv.core.routing import service_router
from bhiv.integrations import signing
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.delivery import fan_out
from bhiv.integrations.models import Event, InboundMessage, WebhookSource
from bhiv.integrations.schemas import (
    InboundAck,
    InboundMessageRead,
    SecretRotation,
    WebhookSourceCreate,
    WebhookSourceRead,
    WebhookSourceUpdate,
    WebhookSourceWithSecret,
)

sources = service_router(tags=["inbound webhooks"])
receiver = service_router(tags=["inbound webhooks"])
SourceId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Webhook source ID.")]
ADMIN = [Depends(require("admin"))]

source_pages = page_params({"id": WebhookSource.id, "name": WebhookSource.name}, default_sort="id")
message_pages = page_params(
    {"id": InboundMessage.id, "received_at": InboundMessage.received_at}, default_sort="-id"
)


def read(source: WebhookSource) -> WebhookSourceRead:
    return WebhookSourceRead(
        id=source.id,
        name=source.name,
        description=source.description,
        active=source.active,
        endpoint=f"/webhooks/{source.name}",
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


def read_message(m: InboundMessage) -> InboundMessageRead:
    text = m.body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return InboundMessageRead(
        id=m.id,
        source_id=m.source_id,
        message_id=m.message_id,
        event_type=m.event_type,
        content_type=m.content_type,
        body=text,
        payload=parsed,
        signed_at=m.signed_at,
        received_at=m.received_at,
        duplicates=m.duplicates,
    )


@sources.get(
    "/webhook-sources",
    response_model=Page[WebhookSourceRead],
    summary="List inbound webhook sources",
)
def list_sources(
    session: SessionDep, params: Annotated[PageParams, Depends(source_pages)]
) -> Page[WebhookSourceRead]:
    return paginate(session, select(WebhookSource), params, read)


@sources.post(
    "/webhook-sources",
    response_model=WebhookSourceWithSecret,
    status_code=status.HTTP_201_CREATED,
    summary="Create an inbound webhook source",
    description="Answers with the signing secret (generated unless given) once; it is stored encrypted and never "
    "shown again. Give it to the sender. Admin only.",
    dependencies=ADMIN,
    responses={409: {"description": "The name is taken."}},
)
def create_source(
    body: WebhookSourceCreate, request: Request, session: SessionDep, response: Response
) -> WebhookSourceWithSecret:
    box: SecretBox = request.app.state.secret_box
    secret = signing.given_or_new(body.secret)
    source = WebhookSource(
        name=body.name, description=body.description, active=body.active, secret=box.seal(secret)
    )
    with unique_as_conflict(session, "webhook_sources", {"name": body.name}, "webhook source"):
        return created(
            session,
            response,
            source,
            lambda source: WebhookSourceWithSecret(**read(source).model_dump(), secret=secret),
            "/webhook-sources",
        )


@sources.get(
    "/webhook-sources/{source_id}", response_model=WebhookSourceRead, summary="Get a webhook source"
)
def get_source(source_id: SourceId, session: SessionDep) -> WebhookSourceRead:
    return read(get_or_404(session, WebhookSource, source_id, "Webhook source"))


@sources.patch(
    "/webhook-sources/{source_id}",
    response_model=WebhookSourceRead,
    summary="Change a webhook source",
    dependencies=ADMIN,
)
def update_source(
    source_id: SourceId, body: WebhookSourceUpdate, session: SessionDep
) -> WebhookSourceRead:
    source = get_or_404(session, WebhookSource, source_id, "Webhook source")
    apply_patch(source, body)
    result = read(source)
    session.commit()
    return result


@sources.post(
    "/webhook-sources/{source_id}/rotate-secret",
    response_model=WebhookSourceWithSecret,
    summary="Replace a source's signing secret",
    description="Messages signed with the old secret are refused from now on. Admin only.",
    dependencies=ADMIN,
)
def rotate_source_secret(
    source_id: SourceId, request: Request, session: SessionDep, body: SecretRotation | None = None
) -> WebhookSourceWithSecret:
    source = get_or_404(session, WebhookSource, source_id, "Webhook source")
    secret = signing.given_or_new(body.secret if body else None)
    source.secret = request.app.state.secret_box.seal(secret)
    source.updated_at = utcnow()
    result = WebhookSourceWithSecret(**read(source).model_dump(), secret=secret)
    session.commit()
    return result


@sources.delete(
    "/webhook-sources/{source_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook source and its messages",
    dependencies=ADMIN,
)
def delete_source(source_id: SourceId, session: SessionDep) -> Response:
    return deleted(session, get_or_404(session, WebhookSource, source_id, "Webhook source"))


@sources.get(
    "/webhook-sources/{source_id}/messages",
    response_model=Page[InboundMessageRead],
    summary="Messages received from a source",
)
def list_messages(
    source_id: SourceId,
    session: SessionDep,
    params: Annotated[PageParams, Depends(message_pages)],
    event_type: Annotated[Annotated[str, StorableText] | None, Query(max_length=200)] = None,
) -> Page[InboundMessageRead]:
    get_or_404(session, WebhookSource, source_id, "Webhook source")
    stmt = select(InboundMessage).where(InboundMessage.source_id == source_id)
    if event_type is not None:
        stmt = stmt.where(InboundMessage.event_type == event_type)
    return paginate(session, stmt, params, read_message)


# --- the public endpoint ----------------------------------------------------------------


def _store(
    db: Database,
    box: SecretBox,
    name: str,
    headers: signing.WebhookHeaders,
    content_type: str | None,
    body: bytes,
    tolerance: int,
) -> InboundAck:
    with db.session() as session:
        source = session.scalar(select(WebhookSource).where(WebhookSource.name == name))
        if source is None:
            raise not_found("Webhook source", name)
        if not source.active:
            # The spec's signal to a sender to stop sending.
            raise Problem(410, f"Webhook source {name} is inactive.", kind="gone")
        try:
            secret = box.open(source.secret)
        except UnreadableSecret:
            raise Problem(
                503,
                "The source's secret cannot be read; an operator must fix the key.",
                kind="not-ready",
            ) from None
        try:
            signing.verify(secret, headers, body, tolerance_seconds=tolerance)
        except signing.SignatureError as exc:
            raise Problem(
                401,
                f"The signature is not valid: {exc}.",
                kind="invalid-signature",
                headers={"WWW-Authenticate": 'Signature realm="bhiv-webhooks"'},
            ) from None
        message_id = headers.msg_id
        existing = _duplicate(session, source.id, message_id)
        if existing is not None:
            return existing
        message = InboundMessage(
            source_id=source.id,
            message_id=message_id,
            event_type=_event_type(body),
            body=body,
            content_type=content_type,
            signed_at=_at(headers.timestamp),
            received_at=utcnow(),
        )
        session.add(message)
        try:
            session.flush()
        except IntegrityError:
            # A concurrent retry of the same message won the insert.
            session.rollback()
            return _duplicate(session, source.id, message_id) or InboundAck(
                id=0, status="duplicate"
            )
        ack = InboundAck(id=message.id, status="accepted")
        _announce(session, name, message)
        session.commit()
        return ack


# The type under which a verified inbound webhook is fanned out to subscribers: how
# agent-orchestration's webhook triggers learn of it (docs/agents.md, Triggers).
WEBHOOK_RECEIVED = "webhook.received"


def _announce(session: Session, source: str, message: InboundMessage) -> None:
    """Fan the verified message out as a ``webhook.received`` event, in its own transaction.

    The event ID derives from the stored message, which is unique per (source,
    webhook-id): a sender's retry is a duplicate before it gets here, so each
    message is announced once.
    """
    try:
        payload = json.loads(message.body)
    except ValueError:
        payload = None
    event = Event(
        event_id=f"whk_{message.id}",
        type=WEBHOOK_RECEIVED,
        source="integrations",
        occurred_at=message.received_at,
        data={
            "source": source,
            "message_id": message.message_id,
            "event_type": message.event_type,
            "payload": payload,
        },
        received_at=message.received_at,
    )
    session.add(event)
    session.flush()
    fan_out(session, event)


def _duplicate(session: Session, source_id: int, message_id: str) -> InboundAck | None:
    existing = session.scalar(
        select(InboundMessage.id).where(
            InboundMessage.source_id == source_id, InboundMessage.message_id == message_id
        )
    )
    if existing is None:
        return None
    session.execute(
        update(InboundMessage)
        .where(InboundMessage.id == existing)
        .values(duplicates=InboundMessage.duplicates + 1)
    )
    session.commit()
    return InboundAck(id=existing, status="duplicate")


def _event_type(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    value = parsed.get("type") if isinstance(parsed, dict) else None
    if isinstance(value, str) and value.isprintable():
        return value[:200]
    return None


def _at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


@receiver.post(
    "/webhooks/{source}",
    response_model=InboundAck,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Receive a webhook (Standard Webhooks signature, no bearer token)",
    description="Verifies `webhook-signature` over `<webhook-id>.<webhook-timestamp>.<body>` with the source's "
    "secret, refuses timestamps more than the tolerance (5 minutes) from now, and stores the raw body. "
    "A webhook-id seen before is answered 200 `duplicate` and ignored.",
    responses={
        200: {"model": InboundAck, "description": "A duplicate webhook-id: ignored."},
        400: {"description": "A webhook header is missing or malformed."},
        401: {
            "description": "The signature does not match, or the timestamp is outside the tolerance."
        },
        404: {"description": "No such source."},
        410: {"description": "The source is inactive: stop sending."},
    },
    # Public: the gateway lets senders through without a bearer token.
    openapi_extra=signed_webhook_operation(),
)
async def receive(
    source: Annotated[
        str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="The source's name.")
    ],
    request: Request,
    response: Response,
) -> InboundAck:
    try:
        headers = signing.parse_headers(request.headers)
    except signing.MalformedHeader as exc:
        raise field_problem(exc.header, exc.reason, status=400, location="header") from None
    content_type = request.headers.get("content-type", "")[:200] or None
    body = await request.body()
    state = request.app.state
    ack = await run_in_threadpool(
        _store,
        state.db,
        state.secret_box,
        source,
        headers,
        content_type,
        body,
        state.settings.webhook_tolerance_seconds,
    )
    if ack.status == "duplicate":
        response.status_code = status.HTTP_200_OK
    return ack
