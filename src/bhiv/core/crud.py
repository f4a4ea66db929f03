"""Small helpers every service's CRUD code needs: lookups, patches, uniqueness."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi import Response, status
from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bhiv.core.db import utcnow
from bhiv.core.errors import Problem, conflict, field_problem, not_found

M = TypeVar("M")
R = TypeVar("R")


def created(
    session: Session,
    response: Response,
    obj: M,
    read: Callable[[M], R],
    path: str,
    *,
    key: str = "id",
) -> R:
    """Finish a create: add and flush ``obj`` (the database assigns its key and checks
    its constraints), build the response with ``read`` while the row is loaded,
    commit, and point ``Location`` at ``{path}/{key}``.

    Call it inside ``unique_as_conflict`` when a unique field may collide: the
    flush or the commit then becomes a 409 naming the field.
    """
    session.add(obj)
    session.flush()
    result = read(obj)
    session.commit()
    response.headers["Location"] = f"{path}/{getattr(obj, key)}"
    return result


def deleted(session: Session, obj: object) -> Response:
    """Finish a delete: remove ``obj``, commit, and answer 204 No Content."""
    session.delete(obj)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def get_or_404(
    session: Session, model: type[M], key: Any, what: str | None = None, *, lock: bool = False
) -> M:
    """The row with primary key ``key``, or a 404.

    ``lock=True`` reads it fresh with ``SELECT ... FOR UPDATE``, held until the
    transaction ends, for a read-check-write of one row: a concurrent writer of
    the same row waits, then sees this transaction's result. (SQLite ignores the
    clause; its writers are serialised by ``BEGIN IMMEDIATE``.)
    """
    obj = session.get(model, key, with_for_update=True if lock else None, populate_existing=lock)
    if obj is None:
        raise not_found(what or model.__name__, key)
    return obj


def require_reference(
    session: Session, model: type[Any], key: Any, field: str, *, lock: bool = False
) -> None:
    """422 naming ``field`` when a referenced row does not exist (checked before any write).

    ``lock=True`` holds ``FOR KEY SHARE`` on the referenced row until the
    transaction ends, so a concurrent delete of it waits for this transaction
    instead of turning its insert into a foreign-key violation.
    """
    lock_mode = {"read": True, "key_share": True} if lock else None
    if key is not None and session.get(model, key, with_for_update=lock_mode) is None:
        raise field_problem(field, f"{model.__name__} {key} does not exist.")


def apply_patch(obj: Any, patch: BaseModel) -> dict[str, Any]:
    """Copy the fields the client actually sent; returns them.

    An explicit null for a column that cannot be null is a 422 naming the field,
    raised before anything is changed.
    """
    changes = patch.model_dump(exclude_unset=True)
    columns = inspect(type(obj)).columns
    for name, value in changes.items():
        if value is None and name in columns and not columns[name].nullable:
            raise field_problem(name, "may not be null")
    for name, value in changes.items():
        setattr(obj, name, value)
    if changes and hasattr(obj, "updated_at"):
        obj.updated_at = utcnow()
    return changes


@contextmanager
def unique_as_conflict(
    session: Session, table: str, unique: dict[str, Any], what: str
) -> Iterator[None]:
    """Turn a unique-constraint violation inside the block into a 409 naming the field.

    Constraint names follow the naming convention ``uq_<table>_<column>``, which
    SQLite reports as ``<table>.<column>`` and PostgreSQL by name. The session is
    rolled back, so nothing from the block is kept.
    """
    try:
        yield
    except IntegrityError as exc:
        session.rollback()
        message = str(exc.orig)
        for field, value in unique.items():
            if f"{table}.{field}" in message or f"uq_{table}_{field}" in message:
                raise Problem(
                    409,
                    f"A {what} with {field} '{value}' already exists.",
                    kind="conflict",
                    errors=[
                        {
                            "location": "body",
                            "field": field,
                            "message": "already exists",
                            "type": "unique",
                        }
                    ],
                ) from None
        raise conflict(f"The {what} conflicts with existing data.") from None


def commit_unique(session: Session, table: str, unique: dict[str, Any], what: str) -> None:
    with unique_as_conflict(session, table, unique, what):
        session.commit()
