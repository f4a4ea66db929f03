"""RFC 9457 problem details for every error a service returns.

Handlers here turn FastAPI's validation errors, HTTP exceptions, domain
:class:`Problem` exceptions and unexpected crashes into ``application/problem+json``.
An unexpected crash is logged with its traceback and answered with the request ID
only: no stack trace, no exception text reaches the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bhiv.core import tracing
from bhiv.core.context import request_id_var

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("bhiv.errors")


class FieldError(BaseModel):
    location: str = Field(
        description="Where the field is: body, query, path or header.", examples=["body"]
    )
    field: str = Field(description="Dotted path of the bad field.", examples=["lines.0.quantity"])
    message: str = Field(examples=["Input should be greater than 0"])
    type: str = Field(description="Machine-readable error kind.", examples=["greater_than"])


class ProblemDetail(BaseModel):
    """An RFC 9457 problem: the body of every 4xx and 5xx answer."""

    type: str = Field("about:blank", examples=["https://bhiv.io/problems/conflict"])
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str | None = Field(None, examples=["Only 3 units of SKU-1 are available; 5 requested."])
    instance: str | None = Field(
        None, description="The request path.", examples=["/inventory/1/movements"]
    )
    request_id: str | None = Field(None, examples=["6f1c0e7a9b2d4c35a1e8f0b7c6d5e4f3"])
    trace_id: str | None = Field(
        None,
        description="The OpenTelemetry trace ID, when tracing is on.",
        examples=["4bf92f3577b34da6a3ce929d0e0e4736"],
    )
    errors: list[FieldError] | None = Field(None, description="One entry per bad field (422 only).")


class Problem(Exception):
    """Raise from domain code to answer with a problem body.

    ``kind`` becomes the problem type URI (``https://bhiv.io/problems/<kind>``) so
    clients can branch on it without parsing ``detail``.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.errors = errors
        self.headers = headers
        self.extra = extra or {}


def not_found(what: str, key: object) -> Problem:
    return Problem(404, f"{what} {key} does not exist.", kind="not-found")


def conflict(detail: str, **extra: Any) -> Problem:
    return Problem(409, detail, kind="conflict", extra=extra)


def field_problem(
    field: str, message: str, *, status: int = 422, location: str = "body"
) -> Problem:
    """A 422 (or other) naming one bad field, shaped like a validation error."""
    return Problem(
        status,
        f"{field}: {message}",
        kind="validation-error",
        errors=[{"location": location, "field": field, "message": message, "type": "value_error"}],
    )


def problem_body(
    status: int,
    detail: str | None,
    *,
    instance: str,
    kind: str | None = None,
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://bhiv.io/problems/{kind}" if kind else "about:blank",
        "title": _title(status),
        "status": status,
        "instance": instance,
        "request_id": request_id_var.get(),
    }
    if trace_id := tracing.current_trace_id():
        body["trace_id"] = trace_id
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    kind: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = problem_body(
        status, detail, instance=request.url.path, kind=kind, errors=errors, extra=extra
    )
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


INTERNAL_ERROR_DETAIL = (
    "The server hit an unexpected error. Quote the request_id when reporting it."
)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _location_and_field(loc: tuple[Any, ...]) -> tuple[str, str]:
    if not loc:
        return "body", ""
    head, rest = str(loc[0]), loc[1:]
    if head not in {"body", "query", "path", "header", "cookie"}:
        return "body", ".".join(str(p) for p in loc)
    return head, ".".join(str(p) for p in rest) or head


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        location, field = _location_and_field(tuple(err.get("loc", ())))
        out.append(
            {
                "location": location,
                "field": field,
                "message": str(err.get("msg")),
                "type": str(err.get("type")),
            }
        )
    return out


def install_problem_handlers(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        fields = ", ".join(sorted({e["field"] for e in errors if e["field"]}))
        return problem_response(
            request,
            422,
            f"Invalid request: {fields or 'malformed input'}.",
            kind="validation-error",
            errors=errors,
        )

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            request, exc.status_code, detail, headers=getattr(exc, "headers", None)
        )

    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.detail,
            kind=exc.kind,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra,
        )

    async def on_database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away (restarting, failing over) or is locked past the
        # wait: the request may succeed shortly, so 503, not 500. Only the driver's
        # error class is logged: the message may quote the statement's values.
        log.warning(
            "database unavailable on %s %s (%s)",
            request.method,
            request.url.path,
            type(exc.orig).__name__,
        )
        return problem_response(
            request,
            503,
            "The database is not reachable; try again shortly.",
            kind="database-unavailable",
            headers={"Retry-After": "5"},
        )

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, INTERNAL_ERROR_DETAIL, kind="internal-error")

    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(Problem, on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, on_database_down)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_crash)
