"""Triggers over real HTTP on SQLite and PostgreSQL: Logistics publishes
inventory.low_stock through its outbox, Integrations delivers it to
agent-orchestration (a subscription agent-orchestration creates itself), and the
low-stock trigger starts inventory-reorder; a signed inbound webhook starts a run;
a schedule fires each tick once; redelivered events start nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from bhiv.agents.settings import AgentsSettings
from tests.service.agents.conftest import ENGINE_ENV
from tests.service.agents.helpers import define, unique, wait_for
from tests.service.integrations.conftest import FAST
from tests.support.servers import TEST_JWT_SECRET, ServiceProcess, service_process


@dataclass
class Platform:
    integrations: ServiceProcess
    logistics: ServiceProcess
    agents: ServiceProcess


@pytest.fixture(scope="module")
def platform(backend: str, request: pytest.FixtureRequest) -> Iterator[Platform]:
    tmp = request.getfixturevalue("tmp_path_factory")

    def database() -> str | None:
        return (
            request.getfixturevalue("postgres").create_database() if backend == "postgres" else None
        )

    integrations = service_process("integrations", tmp.mktemp("int"), database(), **FAST)
    logistics = service_process(
        "logistics",
        tmp.mktemp("log"),
        database(),
        BHIV_INTEGRATIONS_URL=integrations.url,
        BHIV_OUTBOX_RELAY_INTERVAL="0.2",
    )
    agents = service_process(
        "agent-orchestration",
        tmp.mktemp("agents"),
        database(),
        BHIV_AGENTS_SERVICE_URLS=json.dumps(
            {
                "logistics": logistics.url,
                "integrations": integrations.url,
                "crm": "http://127.0.0.1:9",
                "llm-query": "http://127.0.0.1:9",
            }
        ),
        BHIV_AGENTS_SUBSCRIPTION_CHECK_SECONDS="0.5",
        **ENGINE_ENV,
    )
    # Where Integrations delivers: this agents process (its port is chosen already).
    agents.env["BHIV_AGENTS_EVENTS_URL"] = agents.url + "/trigger-events"
    started: list[ServiceProcess] = []
    try:
        for server in (integrations, logistics, agents):
            server.start()
            started.append(server)
        yield Platform(integrations, logistics, agents)
        # Triggers work in the background: their failures would not reach a test's answer.
        errors = [line for line in agents.log().splitlines() if '"level": "ERROR"' in line]
        assert not errors, "agent-orchestration logged errors:\n" + "\n".join(errors[:5])
    finally:
        for server in reversed(started):
            server.stop()


def trigger_named(api: httpx.Client, name: str) -> dict[str, Any]:
    page = api.get("/triggers", params={"limit": 100}).json()
    return next(t for t in page["items"] if t["name"] == name)


def runs_of(api: httpx.Client, workflow: str) -> list[dict[str, Any]]:
    r = api.get("/runs", params={"workflow": workflow, "limit": 100})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def firings(api: httpx.Client, trigger_id: int) -> list[dict[str, Any]]:
    r = api.get(f"/triggers/{trigger_id}/firings", params={"limit": 100})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def subscription(integrations: httpx.Client, url: str) -> dict[str, Any] | None:
    items = integrations.get("/subscriptions", params={"limit": 100}).json()["items"]
    return next((s for s in items if s["url"] == url), None)


def test_shipped_triggers_are_disabled_and_the_nightly_one_has_a_next_fire_time(
    platform: Platform,
) -> None:
    api = platform.agents.client("viewer")
    low = trigger_named(api, "low-stock-reorder")
    assert (low["kind"], low["enabled"], low["builtin"]) == ("event", False, True)
    assert (low["event_type"], low["workflow"]) == ("inventory.low_stock", "inventory-reorder")
    nightly = trigger_named(api, "nightly-integration-sync")
    assert (nightly["kind"], nightly["enabled"], nightly["cron"]) == (
        "schedule",
        False,
        "0 2 * * *",
    )
    next_fire = dt.datetime.fromisoformat(nightly["next_fire_at"])
    now = dt.datetime.now(dt.UTC)
    assert now < next_fire <= now + dt.timedelta(days=1)
    assert (next_fire.hour, next_fire.minute) == (2, 0)  # 02:00 in the default zone, UTC
    # A viewer reads, but may not change a trigger.
    assert api.patch(f"/triggers/{low['id']}", json={"enabled": True}).status_code == 403


def test_low_stock_published_by_logistics_starts_the_reorder_run_once(platform: Platform) -> None:
    api = platform.agents.client("editor")
    integrations = platform.integrations.client()
    low = trigger_named(api, "low-stock-reorder")
    r = api.patch(f"/triggers/{low['id']}", json={"enabled": True})
    assert r.status_code == 200, r.text
    events_url = platform.agents.url + "/trigger-events"
    sub = wait_for(lambda: subscription(integrations, events_url), lambda s: s and s["active"])
    assert "inventory.low_stock" in sub["event_types"]

    logistics = platform.logistics.client()
    sku = unique("SKU")
    r = logistics.post(
        "/inventory", json={"sku": sku, "name": "Widget", "quantity": 10, "reorder_level": 4}
    )
    assert r.status_code == 201, r.text
    item = r.json()
    r = logistics.post(
        f"/inventory/{item['id']}/movements",
        json={"type": "reservation", "quantity": 7, "reference": unique("SO")},
    )
    assert r.status_code == 201, r.text

    def mine() -> list[dict[str, Any]]:
        return [
            run
            for run in runs_of(api, "inventory-reorder")
            if run["started_by"] == "trigger:low-stock-reorder" and run["input"].get("sku") == sku
        ]

    (run,) = wait_for(mine, lambda runs: len(runs) == 1)
    assert run["input"]["item_id"] == item["id"]
    event_id = run["input"]["event_id"]
    assert any(f["dedup_key"] == f"event:{event_id}" for f in firings(api, low["id"]))
    finished = wait_for(
        lambda: api.get(f"/runs/{run['id']}").json(), lambda r: r["status"] != "running"
    )
    assert finished["status"] == "succeeded", finished

    # The integrations delivery log shows the delivery to agent-orchestration...
    def delivery() -> dict[str, Any] | None:
        page = integrations.get(f"/subscriptions/{sub['id']}/deliveries", params={"limit": 100})
        return next((d for d in page.json()["items"] if d["event_id"] == event_id), None)

    done = wait_for(delivery, lambda d: d and d["status"] == "succeeded")
    # ... and delivering it again (at least once) starts no second run.
    r = integrations.post(f"/deliveries/{done['id']}/replay")
    assert r.status_code == 200, r.text
    wait_for(delivery, lambda d: d["status"] == "succeeded" and d["replays"] == 1)
    time.sleep(0.5)
    assert len(mine()) == 1
    api.patch(f"/triggers/{low['id']}", json={"enabled": False})


def sign(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


def test_signed_webhook_starts_a_run_once(platform: Platform) -> None:
    api = platform.agents.client("editor")
    integrations = platform.integrations.client()
    workflow = unique("paid")
    define(api, workflow, {"id": "amount", "type": "set", "value": "{{ input.amount }}"})
    source = unique("acme")
    r = integrations.post("/webhook-sources", json={"name": source})
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    r = api.post(
        "/triggers",
        json={
            "name": unique("on-payment"),
            "kind": "webhook",
            "source": source,
            "enabled": True,
            "workflow": workflow,
            "input": {"amount": "{{ event.data.payload['data']['amount'] }}"},
        },
    )
    assert r.status_code == 201, r.text
    trigger = r.json()
    events_url = platform.agents.url + "/trigger-events"
    wait_for(
        lambda: subscription(integrations, events_url),
        lambda s: s and "webhook.received" in s["event_types"],
    )
    body = json.dumps({"type": "payment.succeeded", "data": {"amount": 1200}}).encode()
    msg_id = unique("msg")
    hook = httpx.Client(base_url=platform.integrations.url, timeout=10)
    r = hook.post(f"/webhooks/{source}", content=body, headers=sign(secret, msg_id, body))
    assert r.status_code == 202, r.text
    (run,) = wait_for(lambda: runs_of(api, workflow), lambda runs: len(runs) == 1)
    assert run["input"] == {"amount": 1200}
    assert run["started_by"] == f"trigger:{trigger['name']}"
    # The sender retries: a duplicate at Integrations, no second run.
    r = hook.post(f"/webhooks/{source}", content=body, headers=sign(secret, msg_id, body))
    assert r.status_code == 200, r.text
    # A forged one is refused before anything happens.
    forged = sign("whsec_" + base64.b64encode(b"x" * 32).decode(), unique("msg"), body)
    assert hook.post(f"/webhooks/{source}", content=body, headers=forged).status_code == 401
    time.sleep(1)
    assert len(runs_of(api, workflow)) == 1


def test_events_delivered_twice_start_nothing_and_forged_ones_are_refused(
    platform: Platform,
) -> None:
    api = platform.agents.client("editor")
    workflow = unique("on-shipment")
    define(api, workflow, {"id": "to", "type": "set", "value": "{{ input.to }}"})
    r = api.post(
        "/triggers",
        json={
            "name": unique("shipped"),
            "kind": "event",
            "event_type": "shipment.status_changed",
            "enabled": True,
            "workflow": workflow,
            "input": {"to": "{{ event.data.to }}", "reference": "{{ event.data.reference }}"},
        },
    )
    assert r.status_code == 201, r.text
    trigger = r.json()
    secret = AgentsSettings(jwt_secret=TEST_JWT_SECRET).events_secret()
    envelope: dict[str, Any] = {
        "id": unique("evt"),
        "type": "shipment.status_changed",
        "timestamp": "2026-12-05T10:00:00Z",
        "source": "logistics",
        "data": {"reference": "SO-9", "from": "pending", "to": "in_transit"},
    }
    body = json.dumps(envelope).encode()
    public = httpx.Client(base_url=platform.agents.url, timeout=10)  # no bearer token
    first = public.post("/trigger-events", content=body, headers=sign(secret, envelope["id"], body))
    assert first.status_code == 200, first.text
    (run_id,) = first.json()["runs"]
    again = public.post("/trigger-events", content=body, headers=sign(secret, envelope["id"], body))
    assert again.status_code == 200, again.text
    assert again.json() == {"runs": [], "duplicates": 1, "errors": []}
    forged = sign("whsec_" + base64.b64encode(b"y" * 32).decode(), envelope["id"], body)
    r = public.post("/trigger-events", content=body, headers=forged)
    assert r.status_code == 401, r.text
    runs = runs_of(api, workflow)
    assert [r["id"] for r in runs] == [run_id]
    assert runs[0]["input"] == {"to": "in_transit", "reference": "SO-9"}
    (firing,) = firings(api, trigger["id"])
    assert (firing["dedup_key"], firing["run_id"]) == (f"event:{envelope['id']}", run_id)


def test_a_schedule_fires_each_tick_once(platform: Platform) -> None:
    api = platform.agents.client("editor")
    workflow = unique("tick")
    define(api, workflow, {"id": "at", "type": "set", "value": "{{ input.at }}"})
    r = api.post(
        "/triggers",
        json={
            "name": unique("every-2s"),
            "kind": "schedule",
            "cron": "* * * * * */2",
            "timezone": "Europe/Berlin",
            "overlap": "allow",
            "enabled": True,
            "workflow": workflow,
            "input": {"at": "{{ tick.at }}", "local": "{{ tick.local }}"},
        },
    )
    assert r.status_code == 201, r.text
    trigger = r.json()
    assert dt.datetime.fromisoformat(trigger["next_fire_at"]) > dt.datetime.now(dt.UTC)
    fired = wait_for(lambda: firings(api, trigger["id"]), lambda f: len(f) >= 3, timeout=30)
    r = api.patch(f"/triggers/{trigger['id']}", json={"enabled": False})
    assert r.status_code == 200, r.text
    keys = [f["dedup_key"] for f in fired]
    assert len(keys) == len(set(keys))
    ticks = sorted(dt.datetime.fromisoformat(k.removeprefix("tick:")) for k in keys)
    assert all(t.second % 2 == 0 and t.microsecond == 0 for t in ticks)
    runs = runs_of(api, workflow)
    assert {r["id"] for r in runs} >= {f["run_id"] for f in fired}
    assert len({r["input"]["at"] for r in runs}) == len(runs)  # one run per tick
    assert all(r["input"]["local"].endswith(("+01:00", "+02:00")) for r in runs)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "event"}, "event_type"),
        ({"kind": "schedule", "cron": "61 * * * *"}, "cron"),
        ({"kind": "schedule", "cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"kind": "event", "event_type": "a.b", "cron": "0 2 * * *"}, "cron"),
        ({"kind": "webhook", "source": "acme", "input": {"x": "{{ __import__('os') }}"}}, "input"),
        ({"kind": "event", "event_type": "a.b", "workflow": "no-such-workflow"}, "workflow"),
        ({"kind": "event", "event_type": "a.b", "version": 999}, "version"),
    ],
)
def test_bad_triggers_are_422_naming_the_field(
    platform: Platform, body: dict[str, Any], field: str
) -> None:
    api = platform.agents.client("editor")
    r = api.post("/triggers", json={"name": unique("bad"), "workflow": "inventory-reorder", **body})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field, r.text


def test_a_patch_is_checked_as_the_whole_trigger(platform: Platform) -> None:
    api = platform.agents.client("editor")
    body = {"kind": "event", "event_type": "lead.converted", "workflow": "inventory-reorder"}
    first = api.post("/triggers", json={"name": unique("a"), **body}).json()
    second = api.post("/triggers", json={"name": unique("b"), **body}).json()
    r = api.patch(f"/triggers/{second['id']}", json={"name": first["name"]})
    assert r.status_code == 409, r.text
    r = api.patch(f"/triggers/{second['id']}", json={"event_type": None})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "event_type", r.text
    r = api.patch(f"/triggers/{second['id']}", json={"cron": "0 2 * * *"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cron", r.text
    r = api.patch(f"/triggers/{second['id']}", json={"enabled": True, "version": 2})
    assert r.status_code == 200 and r.json()["enabled"] is True, r.text
    assert api.delete(f"/triggers/{second['id']}").status_code == 204
    assert api.get(f"/triggers/{second['id']}").status_code == 404


def test_two_replicas_fire_each_tick_once(
    platform: Platform, backend: str, request: pytest.FixtureRequest
) -> None:
    """Two agent-orchestration processes on one database evaluate the same schedule."""
    tmp = request.getfixturevalue("tmp_path_factory")
    if backend == "postgres":
        url = request.getfixturevalue("postgres").create_database()
    else:
        url = f"sqlite:///{tmp.mktemp('shared') / 'agents.db'}"
    replicas = [
        service_process(
            "agent-orchestration",
            tmp.mktemp(f"replica{i}"),
            url,
            BHIV_AGENTS_SERVICE_URLS=json.dumps({"integrations": "http://127.0.0.1:9"}),
            **ENGINE_ENV,
        )
        for i in range(2)
    ]
    replicas[0].start()
    try:
        replicas[1].start()
        try:
            api = replicas[0].client("editor")
            workflow = unique("replicated")
            define(api, workflow, {"id": "at", "type": "set", "value": "{{ input.at }}"})
            r = api.post(
                "/triggers",
                json={
                    "name": unique("every-second"),
                    "kind": "schedule",
                    "cron": "* * * * * *",
                    "overlap": "allow",
                    "enabled": True,
                    "workflow": workflow,
                    "input": {"at": "{{ tick.at }}"},
                },
            )
            assert r.status_code == 201, r.text
            trigger = r.json()
            wait_for(lambda: firings(api, trigger["id"]), lambda f: len(f) >= 4, timeout=30)
            api.patch(f"/triggers/{trigger['id']}", json={"enabled": False})
            fired = firings(api, trigger["id"])
            keys = [f["dedup_key"] for f in fired]
            assert len(keys) == len(set(keys)), keys
            runs = runs_of(replicas[1].client("viewer"), workflow)
            ats = [r["input"]["at"] for r in runs]
            assert len(ats) == len(set(ats)) == len(fired), (ats, keys)
            for replica in replicas:  # losing a race is not an error
                errors = [line for line in replica.log().splitlines() if '"level": "ERROR"' in line]
                assert not errors, errors[:3]
        finally:
            replicas[1].stop()
    finally:
        replicas[0].stop()
