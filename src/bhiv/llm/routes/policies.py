"""Per-key policies (safety action, blocklist, rate limits, budget, cache) and
each caller's view of its own quota."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, Path, Response, status
from sqlalchemy import select

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.crud import deleted
from bhiv.core.errors import not_found
from bhiv.core.routing import service_router
from bhiv.llm import limits, registry
from bhiv.llm.models import KeyPolicy, RateWindow
from bhiv.llm.routes.deps import CallerDep, SessionDep, SettingsDep
from bhiv.llm.schemas import PolicyPut, PolicyRead, Quota

router = service_router(tags=["policies"])
Admin = [Depends(require("admin"))]
Subject = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="A key's subject (as /auth/verify shows it), or 'default'.",
    ),
]
policy_page = page_params({"id": KeyPolicy.id, "subject": KeyPolicy.subject}, "subject")


@router.get(
    "/policies",
    response_model=Page[PolicyRead],
    dependencies=Admin,
    summary="List per-key policies",
)
def list_policies(
    session: SessionDep, params: Annotated[PageParams, Depends(policy_page)]
) -> Page[PolicyRead]:
    return paginate(session, select(KeyPolicy), params, PolicyRead.model_validate)


@router.get(
    "/policies/{subject}",
    response_model=PolicyRead,
    dependencies=Admin,
    summary="A key's policy ('default' falls back to the settings)",
)
def get_policy(subject: Subject, session: SessionDep, settings: SettingsDep) -> PolicyRead:
    row = session.scalar(select(KeyPolicy).where(KeyPolicy.subject == subject))
    if row is not None:
        return PolicyRead.model_validate(row)
    if subject == registry.DEFAULT_POLICY:
        values = registry.settings_policy(settings)
        return PolicyRead(**{**values, "subject": registry.DEFAULT_POLICY})
    raise not_found("Policy", subject)


@router.put(
    "/policies/{subject}",
    response_model=PolicyRead,
    dependencies=Admin,
    summary="Set a key's policy (replaces it whole)",
    description="A key with its own policy ignores the default one entirely. Unset limits mean none.",
)
def put_policy(
    subject: Subject, body: PolicyPut, session: SessionDep, response: Response
) -> PolicyRead:
    row = session.scalar(select(KeyPolicy).where(KeyPolicy.subject == subject))
    created = row is None
    row = row or KeyPolicy(subject=subject)
    for name, value in body.model_dump().items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    if created:
        response.status_code = status.HTTP_201_CREATED
    return PolicyRead.model_validate(row)


@router.delete(
    "/policies/{subject}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=Admin,
    summary="Remove a key's policy (the default applies again)",
)
def delete_policy(subject: Subject, session: SessionDep) -> Response:
    row = session.scalar(select(KeyPolicy).where(KeyPolicy.subject == subject))
    if row is None:
        raise not_found("Policy", subject)
    return deleted(session, row)


@router.get(
    "/quota",
    response_model=Quota,
    summary="The caller's limits, this minute's use and this month's spend",
)
def quota(session: SessionDep, caller: CallerDep, settings: SettingsDep) -> Quota:
    policy = registry.effective_policy(session, settings, caller.subject)
    window = session.get(RateWindow, (caller.subject, int(time.time() // 60)))
    spent = limits.spent_this_month(session, caller.subject, utcnow())
    budget: Decimal | None = policy["monthly_budget_usd"]
    return Quota(
        subject=caller.subject,
        policy=policy["subject"],
        requests_per_minute=policy["requests_per_minute"],
        tokens_per_minute=policy["tokens_per_minute"],
        requests_this_minute=window.requests if window else 0,
        tokens_this_minute=window.tokens if window else 0,
        monthly_budget_usd=budget,
        spent_this_month_usd=spent,
        remaining_usd=max(Decimal(0), budget - spent) if budget is not None else None,
    )
