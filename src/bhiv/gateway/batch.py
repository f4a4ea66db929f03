"""``POST /batch``: several routed requests in one, run concurrently.

Each sub-request goes through the same pipeline as a request of its own (route,
role check, rate limits, retries, breaker), as the batch's caller; answers
come back in request order, each with its own status, so one failure never
hides the others. Sub-requests carry JSON bodies and get identity-encoded
answers (decoded as JSON when they are JSON, text when text, else base64).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from bhiv.core.auth import Identity, current_identity
from bhiv.core.context import request_id_var
from bhiv.core.errors import Problem, field_problem, problem_body
from bhiv.core.middleware import forwarded_chain
from bhiv.core.routing import service_router
from bhiv.gateway.edge import HOP_BY_HOP, Edge, public_location
from bhiv.gateway.forwarder import RequestBody
from bhiv.gateway.ratelimit import rate_limit_headers

router = service_router(tags=["gateway"])

# A sub-request runs as the batch's caller, so it cannot bring credentials of
# its own; the gateway sets the forwarding headers and the answer's encoding.
_FORBIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "cookie",
        "host",
        "content-length",
        "accept-encoding",
        "x-request-id",
    }
    | {h.decode() for h in HOP_BY_HOP}
)


class BatchItem(BaseModel):
    model_config = {"extra": "forbid"}

    id: str | None = Field(
        None, max_length=100, description="Echoed in the result, to match answers to requests."
    )
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    path: str = Field(
        pattern=r"^/api/[^\s#]*$",
        max_length=4096,
        description="Gateway path with its query.",
        examples=["/api/logistics/inventory?limit=5"],
    )
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    body: Any = Field(None, description="A JSON body, sent as application/json.")


class BatchRequest(BaseModel):
    model_config = {"extra": "forbid"}

    requests: list[BatchItem] = Field(
        min_length=1, description="The sub-requests (at most the configured number)."
    )


class BatchResult(BaseModel):
    id: str | None = None
    status: int = Field(examples=[200])
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    body_encoding: Literal["json", "text", "base64", "none"] = "json"


class BatchResponse(BaseModel):
    results: list[BatchResult]


@router.post(
    "/batch",
    response_model=BatchResponse,
    summary="Run several routed requests in one",
    responses={
        401: {"description": "No valid credential."},
        422: {"description": "A malformed batch."},
    },
)
async def batch(
    payload: BatchRequest, request: Request, identity: Identity = Depends(current_identity)
) -> BatchResponse:
    edge: Edge = request.app.state.gateway.edge
    settings = edge.settings
    if len(payload.requests) > settings.gateway_batch_max_items:
        raise field_problem(
            "requests", f"At most {settings.gateway_batch_max_items} sub-requests per batch."
        )
    for n, item in enumerate(payload.requests):
        for name in item.headers:
            if (
                name.lower() in _FORBIDDEN_HEADERS
                or not name.isascii()
                or not name.replace("-", "").isalnum()
            ):
                raise field_problem(
                    f"requests.{n}.headers", f"The header {name!r} cannot be set on a sub-request."
                )
    slots = asyncio.Semaphore(settings.gateway_batch_concurrency)
    client = request.client.host if request.client else "unknown"
    forwarded_for = forwarded_chain(request.scope)
    scheme = request.url.scheme
    rid = request_id_var.get() or "batch"
    # A JWT caller's own token goes upstream unchanged, as for a single request.
    authorization = request.headers.get("authorization") if identity.method == "jwt" else None

    async def run(n: int, item: BatchItem) -> BatchResult:
        async with slots:
            # Tasks copy the context: this ID is the sub-request's alone.
            request_id_var.set(f"{rid}.{n}")
            try:
                return await _one(
                    edge, item, identity, client, scheme, authorization, forwarded_for
                )
            except Problem as problem:
                return BatchResult(
                    id=item.id,
                    status=problem.status,
                    headers=problem.headers or {},
                    body=problem_body(
                        problem.status,
                        problem.detail,
                        instance=item.path,
                        kind=problem.kind,
                        errors=problem.errors,
                        extra=problem.extra,
                    ),
                )

    results = await asyncio.gather(*(run(n, item) for n, item in enumerate(payload.requests)))
    return BatchResponse(results=list(results))


async def _one(
    edge: Edge,
    item: BatchItem,
    identity: Identity,
    client: str,
    scheme: str,
    authorization: str | None,
    forwarded_for: str,
) -> BatchResult:
    parts = urlsplit(item.path)
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
        for k, v in item.headers.items()
    ]
    data = None
    if item.body is not None:
        data = json.dumps(item.body).encode()
        headers = [h for h in headers if h[0] != b"content-type"]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
    admitted = await edge.admit(
        item.method,
        unquote(parts.path),
        parts.path.encode(),
        parts.query.encode(),
        headers,
        client,
        scheme,
        identity=identity,
        caller_authorization=authorization,
        forwarded_for=forwarded_for,
    )
    forwarded = await edge.forwarder.forward(
        admitted.upstream, item.method, admitted.target, admitted.headers, RequestBody(data)
    )
    limit = edge.settings.gateway_batch_max_response_bytes
    try:
        chunks, size = [], 0
        async for chunk in forwarded.chunks():
            size += len(chunk)
            if size > limit:
                raise Problem(
                    502,
                    f"The answer exceeds {limit} bytes, too large for a batch.",
                    kind="bad-gateway",
                )
            chunks.append(chunk)
    finally:
        await forwarded.aclose()
    raw = b"".join(chunks)
    kept = {
        k: v
        for k in ("content-type", "location", "etag", "retry-after")
        if (v := forwarded.header(k))
    }
    if "location" in kept:
        kept["location"] = public_location(kept["location"], forwarded.upstream)
    kept.update((k.decode(), v.decode()) for k, v in rate_limit_headers(admitted.limits))
    kind = kept.get("content-type", "")
    result = BatchResult(id=item.id, status=forwarded.status, headers=kept)
    if not raw:
        result.body_encoding = "none"
    elif "json" in kind:
        try:
            result.body = json.loads(raw)
        except ValueError:
            result.body, result.body_encoding = raw.decode("utf-8", "replace"), "text"
    elif kind.startswith("text/"):
        result.body, result.body_encoding = raw.decode("utf-8", "replace"), "text"
    else:
        result.body, result.body_encoding = base64.b64encode(raw).decode(), "base64"
    return result
