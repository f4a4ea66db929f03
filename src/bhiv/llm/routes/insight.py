"""Usage records, analytics, safety decisions, the safety checker and the cache.

Admins see every caller's records; anyone else sees only their own.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Response, status
from sqlalchemy import Date, case, cast, func, select
from sqlalchemy.sql import ColumnElement

from bhiv.core import Identity, Page, PageParams, current_identity, page_params, paginate, require
from bhiv.core.fields import StorableText, UTCTimestamp
from bhiv.core.routing import service_router
from bhiv.llm import cache, registry, safety
from bhiv.llm.models import SafetyDecision, UsageRecord, UsageStatus
from bhiv.llm.pipeline import MONEY
from bhiv.llm.routes.deps import CallerDep, SessionDep, SettingsDep, is_admin
from bhiv.llm.schemas import (
    CacheStats,
    DecisionRead,
    SafetyCheckRequest,
    SafetyCheckResult,
    UsageAnalytics,
    UsageGroup,
    UsageRead,
)

router = service_router()
IdentityDep = Annotated[Identity, Depends(current_identity)]
Since = Annotated[
    UTCTimestamp | None, Query(description="From this time (inclusive, with a timezone).")
]
Until = Annotated[UTCTimestamp | None, Query(description="Before this time (with a timezone).")]
Filter = Annotated[Annotated[str, StorableText] | None, Query(max_length=200)]
usage_page = page_params(
    {
        "id": UsageRecord.id,
        "created_at": UsageRecord.created_at,
        "cost_usd": UsageRecord.cost_usd,
        "total_tokens": UsageRecord.total_tokens,
    },
    "-id",
)
decision_page = page_params(
    {
        "id": SafetyDecision.id,
        "created_at": SafetyDecision.created_at,
        "score": SafetyDecision.score,
    },
    "-id",
)


def _utc_day(dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(func.timezone("UTC", UsageRecord.created_at), Date)
    return func.date(UsageRecord.created_at)  # SQLite keeps UTC ISO strings


def _scope(
    model: Any, identity: Identity, subject: str | None, tenant: str | None
) -> list[ColumnElement[bool]]:
    """Admins may filter by anyone; others are pinned to themselves."""
    if not is_admin(identity):
        subject, tenant = identity.subject, None
    clauses = []
    if subject is not None:
        clauses.append(model.subject == subject)
    if tenant is not None:
        clauses.append(model.tenant == tenant)
    return clauses


@router.get(
    "/usage", response_model=Page[UsageRead], tags=["usage"], summary="Usage records, newest first"
)
def list_usage(
    session: SessionDep,
    identity: IdentityDep,
    params: Annotated[PageParams, Depends(usage_page)],
    subject: Filter = None,
    tenant: Filter = None,
    model: Filter = None,
    status_: Annotated[UsageStatus | None, Query(alias="status")] = None,
    since: Since = None,
    until: Until = None,
) -> Page[UsageRead]:
    stmt = select(UsageRecord).where(*_scope(UsageRecord, identity, subject, tenant))
    if model is not None:
        stmt = stmt.where(UsageRecord.model_alias == model)
    if status_ is not None:
        stmt = stmt.where(UsageRecord.status == status_)
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if until is not None:
        stmt = stmt.where(UsageRecord.created_at < until)
    return paginate(session, stmt, params, UsageRead.model_validate)


@router.get(
    "/analytics/usage",
    response_model=UsageAnalytics,
    tags=["usage"],
    summary="Requests, tokens and cost grouped by model, key, tenant or day",
)
def usage_analytics(
    session: SessionDep,
    identity: IdentityDep,
    group_by: Annotated[
        Literal["model", "key", "tenant", "day", "provider", "status"], Query()
    ] = "model",
    subject: Filter = None,
    tenant: Filter = None,
    since: Since = None,
    until: Until = None,
) -> UsageAnalytics:
    key_column: Any = {
        "model": UsageRecord.model_alias,
        "key": UsageRecord.subject,
        "tenant": UsageRecord.tenant,
        "provider": UsageRecord.provider,
        "status": UsageRecord.status,
        "day": _utc_day(session.get_bind().dialect.name),
    }[group_by]
    aggregates = (
        func.count(UsageRecord.id),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
        func.coalesce(func.sum(UsageRecord.total_tokens), 0),
        func.coalesce(func.sum(UsageRecord.cost_usd), 0),
        func.coalesce(func.sum(case((UsageRecord.status == UsageStatus.cache_hit, 1), else_=0)), 0),
        func.coalesce(func.sum(case((UsageRecord.status == UsageStatus.error, 1), else_=0)), 0),
        func.coalesce(func.sum(case((UsageRecord.status == UsageStatus.blocked, 1), else_=0)), 0),
    )
    where = _scope(UsageRecord, identity, subject, tenant)
    if since is not None:
        where.append(UsageRecord.created_at >= since)
    if until is not None:
        where.append(UsageRecord.created_at < until)

    def group(key: Any, row: Any) -> UsageGroup:
        n, p, c, t, cost, hits, errors, blocked = row
        return UsageGroup(
            key=None if key is None else str(getattr(key, "value", key)),
            requests=n,
            prompt_tokens=p,
            completion_tokens=c,
            total_tokens=t,
            cost_usd=Decimal(str(cost)).quantize(MONEY),
            cache_hits=hits,
            errors=errors,
            blocked=blocked,
        )

    rows = session.execute(
        select(key_column, *aggregates).where(*where).group_by(key_column).order_by(key_column)
    )
    totals = session.execute(select(*aggregates).where(*where)).one()
    return UsageAnalytics(
        group_by=group_by,
        since=since,
        until=until,
        rows=[group(r[0], r[1:]) for r in rows],
        totals=group("total", totals),
    )


@router.get(
    "/safety/decisions",
    response_model=Page[DecisionRead],
    tags=["safety"],
    summary="Safety decisions with reason and score, newest first",
)
def list_decisions(
    session: SessionDep,
    identity: IdentityDep,
    params: Annotated[PageParams, Depends(decision_page)],
    subject: Filter = None,
    tenant: Filter = None,
    decision: Annotated[
        Literal["allowed", "flagged", "redacted", "blocked"] | None, Query()
    ] = None,
    direction: Annotated[Literal["input", "output"] | None, Query()] = None,
    request_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,128}$")] = None,
) -> Page[DecisionRead]:
    stmt = select(SafetyDecision).where(*_scope(SafetyDecision, identity, subject, tenant))
    if decision is not None:
        stmt = stmt.where(SafetyDecision.decision == decision)
    if direction is not None:
        stmt = stmt.where(SafetyDecision.direction == direction)
    if request_id is not None:
        stmt = stmt.where(SafetyDecision.request_id == request_id)
    return paginate(session, stmt, params, DecisionRead.model_validate)


@router.post(
    "/safety/check",
    response_model=SafetyCheckResult,
    tags=["safety"],
    summary="Check a text against a policy without calling a model (nothing is recorded)",
)
def check_text(
    body: SafetyCheckRequest, session: SessionDep, caller: CallerDep, settings: SettingsDep
) -> SafetyCheckResult:
    policy = registry.safety_policy(registry.effective_policy(session, settings, caller.subject))
    if body.action is not None:
        policy = safety.Policy(body.action, policy.blocklist, policy.injection_threshold)
    v = safety.check([body.text], policy, injection_in=[body.check_injection])
    return SafetyCheckResult(
        decision=v.decision, reason=v.reason, score=v.score, findings=v.findings, text=v.texts[0]
    )


@router.get(
    "/cache", response_model=CacheStats, tags=["cache"], summary="Live cache entries and their hits"
)
def cache_stats(
    session: SessionDep, identity: IdentityDep, settings: SettingsDep, tenant: Filter = None
) -> CacheStats:
    if not is_admin(identity):
        tenant = identity.tenant or "default"
    return CacheStats(
        tenant=tenant, ttl_seconds=settings.llm_cache_ttl_seconds, **cache.stats(session, tenant)
    )


@router.delete(
    "/cache",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["cache"],
    dependencies=[Depends(require("admin"))],
    summary="Empty the caller's tenant's cache",
)
def clear_cache(session: SessionDep, caller: CallerDep) -> Response:
    cache.clear(session, caller.tenant)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
