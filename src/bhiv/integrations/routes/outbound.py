"""Outbound webhooks: subscriptions (admin), their delivery log, and replays."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.crud import created, deleted, get_or_404
from bhiv.core.db import SessionDep
from bhiv.core.errors import field_problem
from bhiv.core.routing import service_router
from bhiv.integrations import delivery as deliveries
from bhiv.integrations import signing
from bhiv.integrations.crypto import SecretBox
from bhiv.integrations.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription
from bhiv.integrations.schemas import (
    AttemptRead,
    DeliveryDetail,
    DeliveryRead,
    ReplayResult,
    SecretRotation,
    SubscriptionCreate,
    SubscriptionRead,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)

router = service_router(tags=["outbound webhooks"])
SubscriptionId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Subscription ID.")]
DeliveryId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Delivery ID.")]
ADMIN = [Depends(require("admin"))]

subscription_pages = page_params(
    {"id": Subscription.id, "created_at": Subscription.created_at}, default_sort="id"
)
delivery_pages = page_params(
    {
        "id": Delivery.id,
        "created_at": Delivery.created_at,
        "next_attempt_at": Delivery.next_attempt_at,
    },
    default_sort="-id",
)


def _check_url(request: Request, url: str) -> None:
    refused = request.app.state.egress.url_refusal(url)
    if refused:
        raise field_problem("url", refused)


def _with_secret(sub: Subscription, secret: str) -> SubscriptionWithSecret:
    return SubscriptionWithSecret(
        **SubscriptionRead.model_validate(sub).model_dump(), secret=secret
    )


def read_delivery(d: Delivery) -> DeliveryRead:
    event = d.event
    return DeliveryRead(
        id=d.id,
        subscription_id=d.subscription_id,
        event_id=event.event_id,
        event_type=event.type,
        status=d.status,
        attempts=d.attempts,
        replays=d.replays,
        next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.pending else None,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


def _detail(session: Session, delivery: Delivery) -> DeliveryDetail:
    attempts = session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id == delivery.id)
        .order_by(DeliveryAttempt.id)
    )
    return DeliveryDetail(
        **read_delivery(delivery).model_dump(),
        attempt_log=[AttemptRead.model_validate(a) for a in attempts],
    )


@router.get(
    "/subscriptions", response_model=Page[SubscriptionRead], summary="List webhook subscriptions"
)
def list_subscriptions(
    session: SessionDep,
    params: Annotated[PageParams, Depends(subscription_pages)],
    active: Annotated[
        bool | None, Query(description="Only active (true) or inactive (false) ones.")
    ] = None,
) -> Page[SubscriptionRead]:
    stmt = select(Subscription)
    if active is not None:
        stmt = stmt.where(Subscription.active.is_(active))
    return paginate(session, stmt, params, SubscriptionRead.model_validate)


@router.post(
    "/subscriptions",
    response_model=SubscriptionWithSecret,
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe a URL to event types",
    description="Answers with the signing secret (generated unless given) once; deliveries carry Standard "
    "Webhooks signatures made with it. Only events received after this are delivered. Admin only.",
    dependencies=ADMIN,
)
def create_subscription(
    body: SubscriptionCreate, request: Request, session: SessionDep, response: Response
) -> SubscriptionWithSecret:
    _check_url(request, body.url)
    secret = signing.given_or_new(body.secret)
    box: SecretBox = request.app.state.secret_box
    sub = Subscription(
        url=body.url,
        description=body.description,
        event_types=sorted(set(body.event_types)),
        active=body.active,
        secret=box.seal(secret),
    )
    return created(session, response, sub, lambda sub: _with_secret(sub, secret), "/subscriptions")


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    summary="Get a subscription",
)
def get_subscription(subscription_id: SubscriptionId, session: SessionDep) -> SubscriptionRead:
    return SubscriptionRead.model_validate(get_or_404(session, Subscription, subscription_id))


@router.patch(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    summary="Change a subscription",
    description="Inactive subscriptions get no new events; their pending deliveries wait until they are active "
    "again. Admin only.",
    dependencies=ADMIN,
)
def update_subscription(
    subscription_id: SubscriptionId, body: SubscriptionUpdate, request: Request, session: SessionDep
) -> SubscriptionRead:
    sub = get_or_404(session, Subscription, subscription_id)
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "event_types", "active"):
        if name in changes and changes[name] is None:
            raise field_problem(name, "may not be null")
    if "url" in changes:
        _check_url(request, changes["url"])
    if "event_types" in changes:
        changes["event_types"] = sorted(set(changes["event_types"]))
    if changes.get("active"):
        sub.disabled_reason = None
    for name, value in changes.items():
        setattr(sub, name, value)
    sub.updated_at = utcnow()
    result = SubscriptionRead.model_validate(sub)
    session.commit()
    return result


@router.post(
    "/subscriptions/{subscription_id}/rotate-secret",
    response_model=SubscriptionWithSecret,
    summary="Replace a subscription's signing secret",
    description="Every attempt from now on is signed with the new secret. Admin only.",
    dependencies=ADMIN,
)
def rotate_subscription_secret(
    subscription_id: SubscriptionId,
    request: Request,
    session: SessionDep,
    body: SecretRotation | None = None,
) -> SubscriptionWithSecret:
    sub = get_or_404(session, Subscription, subscription_id)
    secret = signing.given_or_new(body.secret if body else None)
    sub.secret = request.app.state.secret_box.seal(secret)
    sub.updated_at = utcnow()
    result = _with_secret(sub, secret)
    session.commit()
    return result


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a subscription and its delivery log",
    dependencies=ADMIN,
)
def delete_subscription(subscription_id: SubscriptionId, session: SessionDep) -> Response:
    return deleted(session, get_or_404(session, Subscription, subscription_id))


@router.get(
    "/subscriptions/{subscription_id}/deliveries",
    response_model=Page[DeliveryRead],
    summary="A subscription's delivery log",
)
def list_deliveries(
    subscription_id: SubscriptionId,
    session: SessionDep,
    params: Annotated[PageParams, Depends(delivery_pages)],
    status_: Annotated[
        DeliveryStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
) -> Page[DeliveryRead]:
    get_or_404(session, Subscription, subscription_id)
    stmt = select(Delivery).where(Delivery.subscription_id == subscription_id)
    if status_ is not None:
        stmt = stmt.where(Delivery.status == status_)
    return paginate(session, stmt, params, read_delivery)


@router.post(
    "/subscriptions/{subscription_id}/replay",
    response_model=ReplayResult,
    summary="Replay every dead-lettered delivery of a subscription",
    description="Each starts a fresh round of attempts, e.g. after the receiver's outage is over.",
)
def replay_dead(subscription_id: SubscriptionId, session: SessionDep) -> ReplayResult:
    get_or_404(session, Subscription, subscription_id)
    count = deliveries.replay_dead(session, subscription_id)
    session.commit()
    return ReplayResult(replayed=count)


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    summary="A delivery and its attempts",
)
def get_delivery(delivery_id: DeliveryId, session: SessionDep) -> DeliveryDetail:
    return _detail(session, get_or_404(session, Delivery, delivery_id))


@router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=DeliveryDetail,
    summary="Send a delivery again",
    description="For a dead (or succeeded) delivery: queues a fresh round of attempts with the same webhook-id. "
    "409 while it is still pending.",
    responses={409: {"description": "The delivery is still pending."}},
)
def replay_delivery(delivery_id: DeliveryId, session: SessionDep) -> DeliveryDetail:
    delivery = get_or_404(session, Delivery, delivery_id)
    deliveries.replay(session, delivery)
    session.flush()
    result = _detail(session, delivery)
    session.commit()
    return result
