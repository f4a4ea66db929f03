"""Exact-match response cache, per tenant, with a time to live.

The key is a SHA-256 of everything that shapes an answer: the route (alias and
fallbacks), the messages after input filtering, and the sampling parameters.
Entries hold the provider's answer before output filtering; each caller's own
policy is applied when an entry is served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bhiv.core import utcnow
from bhiv.core.db import rows_changed
from bhiv.llm.models import CacheEntry
from bhiv.llm.upsert import insert_for


def cache_key(aliases: list[str], messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"route": aliases, "messages": messages, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def lookup(session: Session, tenant: str, key: str) -> dict[str, Any] | None:
    """The cached answer, counting the hit; None when absent or expired."""
    entry = session.scalar(
        select(CacheEntry).where(
            CacheEntry.tenant == tenant, CacheEntry.key == key, CacheEntry.expires_at > utcnow()
        )
    )
    if entry is None:
        return None
    session.execute(
        update(CacheEntry)
        .where(CacheEntry.id == entry.id)
        .values(hits=CacheEntry.hits + 1)
        .execution_options(synchronize_session=False)
    )
    return dict(entry.response)


def store(
    session: Session, tenant: str, key: str, alias: str, response: dict[str, Any], ttl_seconds: int
) -> None:
    now = utcnow()
    values = {
        "response": response,
        "model_alias": alias,
        "created_at": now,
        "expires_at": now + dt.timedelta(seconds=ttl_seconds),
        "hits": 0,
    }
    # Two identical requests that both missed may both store: the later wins.
    session.execute(
        insert_for(session, CacheEntry)
        .values(tenant=tenant, key=key, **values)
        .on_conflict_do_update(index_elements=["tenant", "key"], set_=values)
    )


def stats(session: Session, tenant: str | None) -> dict[str, int]:
    stmt = select(func.count(CacheEntry.id), func.coalesce(func.sum(CacheEntry.hits), 0)).where(
        CacheEntry.expires_at > utcnow()
    )
    if tenant is not None:
        stmt = stmt.where(CacheEntry.tenant == tenant)
    entries, hits = session.execute(stmt).one()
    return {"entries": int(entries), "hits": int(hits)}


def clear(session: Session, tenant: str) -> int:
    return rows_changed(session.execute(delete(CacheEntry).where(CacheEntry.tenant == tenant)))


def purge_expired(session: Session) -> int:
    return rows_changed(
        session.execute(delete(CacheEntry).where(CacheEntry.expires_at <= utcnow()))
    )
