"""The integrations subscription through which domain events reach triggers.

Agent-orchestration receives events as a webhook subscriber of the integrations
service, at its own platform URL (``BHIV_AGENT_ORCHESTRATION_URL`` +
``/trigger-events``, which integrations' egress check always lets through). This
background task keeps that one subscription in step with the enabled triggers —
created on first need, its event types those of the enabled event triggers
(plus ``webhook.received`` for webhook triggers), deactivated when none is
enabled — so switching a trigger on is the only step. It runs at start-up, on
every trigger change, and every ``BHIV_AGENTS_SUBSCRIPTION_CHECK_SECONDS``
(integrations may have been down, or an operator may have edited it). Every
replica may run it: each change is idempotent, and the subscription is found by
its URL.

The subscription's signing secret is set by this service (given, or derived
from the shared JWT secret, so every replica agrees without storing it) and
re-set once per process start, so a changed secret takes effect on restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import httpx
from fastapi import FastAPI
from sqlalchemy import select

from bhiv.agents.models import Trigger, TriggerKind
from bhiv.agents.settings import AgentsSettings
from bhiv.agents.triggers import WEBHOOK_RECEIVED
from bhiv.core.background import background, sleep_unless_stopped
from bhiv.core.db import Database
from bhiv.core.service_auth import service_headers

log = logging.getLogger("bhiv.agents.subscription")
DESCRIPTION = "agent-orchestration triggers (managed by agent-orchestration; edits are undone)"


def wanted_types(db: Database) -> list[str]:
    with db.session(write=False) as s:
        rows = s.execute(
            select(Trigger.kind, Trigger.event_type).where(
                Trigger.enabled.is_(True),
                Trigger.kind.in_((TriggerKind.event, TriggerKind.webhook)),
            )
        ).all()
    types = {WEBHOOK_RECEIVED if kind is TriggerKind.webhook else str(t) for kind, t in rows}
    return sorted(types)


class SubscriptionKeeper:
    def __init__(self, settings: AgentsSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.wake = asyncio.Event()
        self.secret_set = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.ensure()
            except Exception as exc:  # integrations down or refusing: try again later
                log.warning("could not update the integrations subscription for triggers: %s", exc)
            await sleep_unless_stopped(self.wake, self.settings.agents_subscription_check_seconds)
            self.wake.clear()

    async def ensure(self) -> None:
        wanted = await anyio.to_thread.run_sync(wanted_types, self.db)
        url = self.settings.events_url()
        base = self.settings.agents_service_urls["integrations"].rstrip("/")
        headers = service_headers(
            self.settings, api_key=self.settings.agents_service_api_key, role="admin"
        )
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
            existing = await self._find(client, url)
            if existing is None:
                if not wanted:
                    return
                answer = await client.post(
                    "/subscriptions",
                    json={
                        "url": url,
                        "description": DESCRIPTION,
                        "event_types": wanted,
                        "secret": self.settings.events_secret(),
                    },
                )
                answer.raise_for_status()
                self.secret_set = True
                log.info("subscribed to %s at %s", ", ".join(wanted), url)
                return
            sub_id = existing["id"]
            if not self.secret_set:
                answer = await client.post(
                    f"/subscriptions/{sub_id}/rotate-secret",
                    json={"secret": self.settings.events_secret()},
                )
                answer.raise_for_status()
                self.secret_set = True
            change: dict[str, Any] = {}
            if wanted and sorted(existing["event_types"]) != wanted:
                change["event_types"] = wanted
            if existing["active"] != bool(wanted):
                change["active"] = bool(wanted)
            if change:
                answer = await client.patch(f"/subscriptions/{sub_id}", json=change)
                answer.raise_for_status()
                log.info("trigger subscription %s changed: %s", sub_id, change)

    async def _find(self, client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
        offset = 0
        while True:
            answer = await client.get("/subscriptions", params={"limit": 100, "offset": offset})
            answer.raise_for_status()
            page = answer.json()
            for item in page["items"]:
                if item["url"].rstrip("/") == url.rstrip("/"):
                    return dict(item)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return None


@asynccontextmanager
async def subscription_hook(app: FastAPI) -> AsyncIterator[None]:
    keeper = SubscriptionKeeper(app.state.settings, app.state.db)
    app.state.trigger_subscription = keeper
    async with background("trigger-subscription", keeper.run, grace=0):
        yield
