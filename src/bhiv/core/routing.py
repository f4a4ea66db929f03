"""The routers every service declares its operations on.

A ``def`` handler runs in the thread pool, as in FastAPI; what changes is that
its answer is validated and serialised on the event loop. FastAPI gives a sync
handler a second trip to the pool for that (``serialize_response`` with
``is_coroutine=False``), which cost about 15 % of a simple read's throughput
(docs/performance.md). Wrapping the handler in a coroutine that runs it in the
pool keeps one trip per request. The wrapper keeps the handler's signature,
name and docstring (``functools.wraps``), so dependencies, the OpenAPI document
and operation IDs are the handler's own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool


def one_trip_to_the_pool(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` as a coroutine function that runs it in the thread pool (unchanged if async)."""
    if (
        inspect.iscoroutinefunction(endpoint)
        or inspect.isasyncgenfunction(endpoint)
        or inspect.isgeneratorfunction(endpoint)
        or not inspect.isfunction(endpoint)
    ):
        return endpoint

    @functools.wraps(endpoint)
    async def in_the_pool(*args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return in_the_pool


class ServiceRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, one_trip_to_the_pool(endpoint), **kwargs)


def service_router(**kwargs: Any) -> APIRouter:
    """An ``APIRouter`` whose sync handlers make one trip to the thread pool per request."""
    return APIRouter(route_class=ServiceRoute, **kwargs)
