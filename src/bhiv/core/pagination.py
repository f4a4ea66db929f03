"""Pagination, sorting and filtering conventions shared by every list endpoint.

- ``limit`` (1..MAX_LIMIT, default 50) and ``offset``; the answer carries ``total``.
- ``sort``: comma-separated field names, ``-`` for descending (``sort=-quantity,name``);
  the allowed names are part of each endpoint's OpenAPI (a regex), so a typo is a 422.
- filters: one query parameter per field for exact matches, ``q`` for free-text
  search, ``<field>_min``/``<field>_max`` for ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session

T = TypeVar("T")
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="How many items match, across all pages.", examples=[1])
    limit: int = Field(examples=[DEFAULT_LIMIT])
    offset: int = Field(examples=[0])


# What a sortable or searchable field may be: a mapped attribute (`Item.name`) or any
# column expression.
Column = ColumnElement[Any] | QueryableAttribute[Any]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int
    order_by: tuple[ColumnElement[Any], ...]


def page_params(sortable: Mapping[str, Column], default_sort: str) -> Callable[..., PageParams]:
    """A dependency parsing limit/offset/sort for one endpoint's sortable fields."""
    names = "|".join(sorted(sortable))
    pattern = rf"^-?({names})(,-?({names}))*$"
    unique_tiebreak = sortable.get("id")

    def dependency(
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size."),
        offset: int = Query(0, ge=0, le=2**31, description="Items to skip."),
        sort: str = Query(
            default_sort,
            pattern=pattern,
            description=f"Comma-separated fields, '-' for descending. Fields: {', '.join(sorted(sortable))}.",
            examples=[default_sort],
        ),
    ) -> PageParams:
        order: list[ColumnElement[Any]] = []
        for part in sort.split(","):
            column = sortable[part.lstrip("-")]
            order.append(column.desc() if part.startswith("-") else column.asc())
        # A unique last key keeps pages stable when sort values tie.
        if unique_tiebreak is not None and "id" not in {p.lstrip("-") for p in sort.split(",")}:
            order.append(unique_tiebreak.asc())
        return PageParams(limit=limit, offset=offset, order_by=tuple(order))

    return dependency


def paginate(
    session: Session, stmt: Select[Any], params: PageParams, item: Callable[[Any], T]
) -> Page[T]:
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows: Sequence[Any] = session.scalars(
        stmt.order_by(*params.order_by).limit(params.limit).offset(params.offset)
    ).all()
    return Page[Any](
        items=[item(r) for r in rows], total=total, limit=params.limit, offset=params.offset
    )


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
