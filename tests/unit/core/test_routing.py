"""Every operation of every service makes one trip to the thread pool (bhiv.core.routing)."""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from bhiv import catalog
from bhiv.core.routing import one_trip_to_the_pool, service_router


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # An included router is served from its original routes.
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from _api_routes(original.routes)


@pytest.mark.parametrize("name", list(catalog.SERVICES))
def test_no_operation_is_a_plain_sync_handler(name: str) -> None:
    module, _, factory = catalog.get(name).app_factory.partition(":")
    app = getattr(importlib.import_module(module), factory)()
    routes = list(_api_routes(app.router.routes))
    assert routes, f"{name}: no operations found"
    sync = [r.path for r in routes if not inspect.iscoroutinefunction(r.endpoint)]
    assert sync == [], f"{name}: declare these on bhiv.core.routing.service_router: {sync}"


def test_a_sync_handler_runs_in_the_pool_and_keeps_its_signature() -> None:
    router = service_router()

    @router.get("/items/{item_id}", summary="One item")
    def read_item(item_id: int, q: str = "x") -> dict[str, Any]:
        """Returns the item."""
        return {"id": item_id, "q": q, "thread": threading.current_thread().name}

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        answer = client.get("/items/7?q=y").json()
        invalid = client.get("/items/seven")
    assert answer["id"] == 7 and answer["q"] == "y"
    assert answer["thread"] != threading.main_thread().name
    assert invalid.status_code == 422
    operation = app.openapi()["paths"]["/items/{item_id}"]["get"]
    assert operation["operationId"] == "read_item_items__item_id__get"
    assert operation["description"] == "Returns the item."


def test_async_handlers_and_generators_are_left_as_they_are() -> None:
    async def coroutine() -> None: ...

    def generator() -> Iterator[int]:
        yield 1

    assert one_trip_to_the_pool(coroutine) is coroutine
    assert one_trip_to_the_pool(generator) is generator
