"""The per-request load limit: a turn, a bounded queue, then 503 problems; probes always answered."""

from __future__ import annotations

import asyncio
import json

from bhiv.core.middleware import LoadShedMiddleware


def test_excess_requests_wait_then_are_shed_and_probes_are_exempt() -> None:
    async def scenario() -> list[tuple[str, int, dict]]:
        gate = asyncio.Event()

        async def app(scope, receive, send):  # noqa: ANN001, ANN202
            if scope["path"] == "/work":
                await gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        shed = LoadShedMiddleware(app, limit=1, queue=1, wait=0.2, exempt_paths=("/health",))
        answers: list[tuple[str, int, dict]] = []

        async def call(name: str, path: str) -> None:
            started: dict = {}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    started.update(message)
                else:
                    headers = dict(started["headers"])
                    answers.append(
                        (
                            name,
                            started["status"],
                            {
                                **json.loads(message["body"] or b"{}"),
                                **{k.decode(): v.decode() for k, v in headers.items()},
                            },
                        )
                    )

            await shed({"type": "http", "path": path, "headers": []}, None, send)  # type: ignore[arg-type]

        first = asyncio.create_task(call("first", "/work"))
        await asyncio.sleep(0)  # holds the only turn
        queued = asyncio.create_task(call("queued", "/work"))
        await asyncio.sleep(0)  # waits in the queue's only place
        await call("overflow", "/work")  # finds the queue full: shed at once
        await call("probe", "/health")  # answered while the turn is taken
        await queued  # waited its 0.2 s, then shed
        gate.set()
        await first
        return answers

    answers = {name: (status, body) for name, status, body in asyncio.run(scenario())}
    assert answers["probe"][0] == 200 and answers["first"][0] == 200
    for name in ("overflow", "queued"):
        status, body = answers[name]
        assert (
            status == 503 and body["type"].endswith("/overloaded") and body["retry-after"] == "1"
        ), body
        assert body["content-type"] == "application/problem+json"
