"""A router for a plain resource: list (search, filters, sort, pages), create,
get, patch and delete, built from a model and its schemas.

For resources whose operations are only storage. Anything with rules of its
own (stock, state machines) writes its routes by hand with the same helpers.
"""

# No `from __future__ import annotations`: FastAPI must resolve these local types.

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from bhiv.core.crud import (
    apply_patch,
    created,
    deleted,
    get_or_404,
    require_reference,
    unique_as_conflict,
)
from bhiv.core.db import SessionDep
from bhiv.core.fields import StorableText
from bhiv.core.pagination import Column, Page, PageParams, like_pattern, page_params, paginate
from bhiv.core.routing import service_router

# Returns extra WHERE clauses from an endpoint's own query parameters.
FilterDependency = Callable[..., list[ColumnElement[bool]]]


def _no_filters() -> list[ColumnElement[bool]]:
    return []


def resource_router(
    *,
    path: str,
    what: str,
    model: type[Any],
    create_schema: type[BaseModel],
    update_schema: type[BaseModel],
    read_schema: type[BaseModel],
    unique: Sequence[str] = (),
    search: Sequence[Column] = (),
    sortable: Mapping[str, Column],
    default_sort: str = "id",
    filters: FilterDependency = _no_filters,
    references: Mapping[str, type[Any]] | None = None,
    before_delete: Callable[[Session, Any], None] | None = None,
    tag: str,
) -> APIRouter:
    router = service_router(tags=[tag])
    table = model.__tablename__
    references = references or {}
    id_name = f"{what}_id"
    # The path says /suppliers/{supplier_id}; the alias maps it onto `obj_id`.
    Id = Annotated[
        int, Path(alias=id_name, ge=1, le=2**31 - 1, description=f"{what.capitalize()} ID.")
    ]
    pages = page_params(sortable, default_sort)

    @router.get(path, response_model=Page[read_schema], summary=f"List {what}s")  # type: ignore[valid-type]
    def list_(
        session: SessionDep,
        params: Annotated[PageParams, Depends(pages)],
        extra: Annotated[list[ColumnElement[bool]], Depends(filters)],
        q: Annotated[
            Annotated[str, StorableText] | None,
            Query(max_length=200, description="Free-text search."),
        ] = None,
    ) -> Any:
        stmt = select(model)
        if q and search:
            pattern = like_pattern(q)
            stmt = stmt.where(or_(*(col.ilike(pattern, escape="\\") for col in search)))
        for clause in extra:
            stmt = stmt.where(clause)
        return paginate(session, stmt, params, read_schema.model_validate)

    @router.post(
        path,
        response_model=read_schema,
        status_code=status.HTTP_201_CREATED,
        summary=f"Create a {what}",
        responses={409: {"description": f"A {what} with the same unique field exists."}},
    )
    def create(body: create_schema, session: SessionDep, response: Response) -> Any:  # type: ignore[valid-type]
        values = cast(BaseModel, body).model_dump()
        for field, target in references.items():
            require_reference(session, target, values.get(field), field)
        obj = model(**values)
        with unique_as_conflict(session, table, {f: values.get(f) for f in unique}, what):
            return created(session, response, obj, read_schema.model_validate, path)

    @router.get(f"{path}/{{{id_name}}}", response_model=read_schema, summary=f"Get a {what}")
    def get(obj_id: Id, session: SessionDep) -> Any:
        return read_schema.model_validate(get_or_404(session, model, obj_id, what.capitalize()))

    @router.patch(
        f"{path}/{{{id_name}}}",
        response_model=read_schema,
        summary=f"Change a {what}",
        responses={409: {"description": f"A {what} with the same unique field exists."}},
    )
    def patch(obj_id: Id, body: update_schema, session: SessionDep) -> Any:  # type: ignore[valid-type]
        obj = get_or_404(session, model, obj_id, what.capitalize())
        changes = cast(BaseModel, body).model_dump(exclude_unset=True)
        for field, target in references.items():
            require_reference(session, target, changes.get(field), field)
        with unique_as_conflict(
            session, table, {f: changes.get(f) for f in unique if f in changes}, what
        ):
            apply_patch(obj, body)
            session.commit()
        return read_schema.model_validate(obj)

    @router.delete(
        f"{path}/{{{id_name}}}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary=f"Delete a {what}",
        responses={409: {"description": f"The {what} is still in use."}},
    )
    def delete(obj_id: Id, session: SessionDep) -> Response:
        obj = get_or_404(session, model, obj_id, what.capitalize())
        if before_delete is not None:
            before_delete(session, obj)
        return deleted(session, obj)

    return router
