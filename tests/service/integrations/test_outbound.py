"""Outbound webhooks to a real receiver: signatures, retries with backoff, the
dead-letter state, replays, and deliveries that survive a restart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import run_service
from tests.service.integrations.conftest import FAST
from tests.service.integrations.helpers import (
    created,
    deliveries,
    event,
    new_subscription,
    settled,
    unique,
)
from tests.service.integrations.peers import Receiver, receiver, wait_until
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def path() -> str:
    return "/" + unique("hook")


class TestDelivery:
    def test_receiver_failing_twice_gets_it_on_the_third_attempt(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        hooks.script[where] = [500, 503, 200]
        sub = new_subscription(api, hooks.url + where, ["order.*"])
        sent = event("order.placed", order_id=7)
        accepted = created(api.post("/events", json=sent))
        assert accepted == {"id": sent["id"], "duplicate": False, "deliveries": 1}

        [delivery] = settled(api, sub["id"], 1, "succeeded")
        detail = api.get(f"/deliveries/{delivery['id']}").json()
        assert [a["status_code"] for a in detail["attempt_log"]] == [500, 503, 200]
        assert (
            detail["attempts"] == 3 and detail["delivered_at"] and detail["next_attempt_at"] is None
        )
        gaps = [
            (
                dt.datetime.fromisoformat(b["attempted_at"])
                - dt.datetime.fromisoformat(a["attempted_at"])
            ).total_seconds()
            for a, b in zip(detail["attempt_log"], detail["attempt_log"][1:], strict=False)
        ]
        # 0.3 s then 0.6 s (exponential, base 2), each stretched by up to 10 %.
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[1] > gaps[0], gaps

        attempts = hooks.at(where)
        assert len(attempts) == 3
        assert (
            len({a.headers["webhook-id"] for a in attempts}) == 1
            and attempts[0].headers["webhook-id"] == sent["id"]
        )
        for attempt in attempts:
            # Any Standard Webhooks consumer verifies it with the subscription's secret.
            Webhook(sub["secret"]).verify(attempt.body, attempt.headers)
        assert attempts[-1].json == {
            "id": sent["id"],
            "type": "order.placed",
            "timestamp": "2026-11-26T10:00:00Z",
            "source": "tests",
            "data": {"order_id": 7},
        }

    def test_patterns_choose_the_subscriptions(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        kind = unique("fam").replace("-", "_")
        exact = new_subscription(api, hooks.url + path(), [f"{kind}.one"])
        family = new_subscription(api, hooks.url + path(), [f"{kind}.*"])
        paused = new_subscription(api, hooks.url + path(), [f"{kind}.*"], active=False)
        assert created(api.post("/events", json=event(f"{kind}.one")))["deliveries"] >= 2
        created(api.post("/events", json=event(f"{kind}.two")))
        assert len(settled(api, exact["id"], 1, "succeeded")) == 1
        assert len(settled(api, family["id"], 2, "succeeded")) == 2
        assert deliveries(api, paused["id"]) == []

    def test_an_event_sent_twice_is_delivered_once(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        sub = new_subscription(api, hooks.url + where, ["dedup.test"])
        sent = event("dedup.test")
        assert api.post("/events", json=sent).status_code == 201
        again = api.post("/events", json=sent)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        settled(api, sub["id"], 1, "succeeded")
        assert len(deliveries(api, sub["id"])) == 1 and len(hooks.at(where)) == 1

    def test_timeouts_count_as_failures(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        hooks.delay[where] = 1.5  # the service waits 1 s
        sub = new_subscription(api, hooks.url + where, ["slow.receiver"])
        created(api.post("/events", json=event("slow.receiver")))
        wait_until(
            lambda: deliveries(api, sub["id"])[0]["attempts"] >= 1, 30, "a timed-out attempt"
        )
        first = deliveries(api, sub["id"])[0]
        assert first["last_status_code"] is None and "no answer within" in first["last_error"]
        del hooks.delay[where]
        settled(api, sub["id"], 1, "succeeded")


def dead_letters(api: httpx.Client) -> float:
    """bhiv_webhook_deliveries{status="dead"} from the service's /metrics."""
    for line in api.get("/metrics").text.splitlines():
        if line.startswith('bhiv_webhook_deliveries{status="dead"} '):
            return float(line.split()[-1])
    raise AssertionError("no dead-letter count in /metrics")


class TestDeadLetters:
    def test_dead_after_the_last_attempt_then_replayed(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        dead_before = dead_letters(api)
        where = path()
        hooks.script[where] = [500]
        sub = new_subscription(api, hooks.url + where, ["dead.letter"])
        created(api.post("/events", json=event("dead.letter")))
        [dead] = settled(api, sub["id"], 1, "dead")
        assert dead["attempts"] == 4 and dead["last_status_code"] == 500
        assert len(hooks.at(where)) == 4
        # The dead-letter count the alert BhivWebhookDeadLettersGrowing watches.
        assert dead_letters(api) == dead_before + 1

        # Still pending work cannot be replayed; dead work can, as a new round.
        hooks.script[where] = [200]
        replayed = api.post(f"/deliveries/{dead['id']}/replay")
        assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
        assert_problem(api.post(f"/deliveries/{dead['id']}/replay"), 409)
        [done] = settled(api, sub["id"], 1, "succeeded")
        assert done["replays"] == 1 and done["attempts"] == 1
        log = api.get(f"/deliveries/{dead['id']}").json()["attempt_log"]
        assert [a["status_code"] for a in log] == [500, 500, 500, 500, 200]
        assert dead_letters(api) == dead_before

    def test_replay_every_dead_delivery_of_a_subscription(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        hooks.script[where] = [500]
        sub = new_subscription(api, hooks.url + where, ["outage.*"])
        for n in range(3):
            created(api.post("/events", json=event("outage.event", n=n)))
        settled(api, sub["id"], 3, "dead")
        hooks.script[where] = [200]
        assert api.post(f"/subscriptions/{sub['id']}/replay").json() == {"replayed": 3}
        settled(api, sub["id"], 3, "succeeded")

    def test_410_gone_disables_the_subscription(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        hooks.script[where] = [410]
        sub = new_subscription(api, hooks.url + where, ["gone.test"])
        created(api.post("/events", json=event("gone.test")))
        [dead] = settled(api, sub["id"], 1, "dead")
        assert dead["attempts"] == 1
        after = api.get(f"/subscriptions/{sub['id']}").json()
        assert after["active"] is False and "410" in after["disabled_reason"]
        created(api.post("/events", json=event("gone.test")))
        assert len(deliveries(api, sub["id"])) == 1
        reactivated = api.patch(f"/subscriptions/{sub['id']}", json={"active": True}).json()
        assert reactivated["active"] and reactivated["disabled_reason"] is None


class TestSubscriptions:
    def test_secret_shown_once_and_egress_checked(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        sub = new_subscription(api, hooks.url + path(), ["a.b"])
        assert sub["secret"].startswith("whsec_")
        assert "secret" not in api.get(f"/subscriptions/{sub['id']}").json()
        assert sub["secret"] not in api.get("/subscriptions", params={"limit": 500}).text
        problem = assert_problem(
            api.post(
                "/subscriptions",
                json={"url": "https://hooks.partner.example/x", "event_types": ["a.b"]},
            ),
            422,
            "url",
        )
        assert "BHIV_EGRESS_ALLOWED_HOSTS" in problem["detail"]
        assert_problem(
            api.post("/subscriptions", json={"url": hooks.url, "event_types": ["Bad Type"]}),
            422,
            "event_types.0",
        )
        assert_problem(
            api.post("/subscriptions", json={"url": hooks.url, "event_types": []}),
            422,
            "event_types",
        )
        assert_problem(api.patch(f"/subscriptions/{sub['id']}", json={"url": None}), 422, "url")

    def test_rotated_secret_signs_the_next_attempts(
        self, integrations: ServiceProcess, hooks: Receiver
    ) -> None:
        api = integrations.client()
        where = path()
        sub = new_subscription(api, hooks.url + where, ["rotate.me"])
        rotated = api.post(f"/subscriptions/{sub['id']}/rotate-secret").json()["secret"]
        created(api.post("/events", json=event("rotate.me")))
        settled(api, sub["id"], 1, "succeeded")
        [got] = hooks.at(where)
        Webhook(rotated).verify(got.body, got.headers)


@pytest.fixture
def patient(backend: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """A service that keeps retrying long enough to outlive its own restart."""
    yield from run_service(
        "integrations", backend, request, **(FAST | {"BHIV_DELIVERY_MAX_ATTEMPTS": "50"})
    )


def test_pending_deliveries_survive_a_restart(patient: ServiceProcess) -> None:
    """Events accepted while the receiver fails are all delivered after the
    service restarts: the queue is in the database, not in the process."""
    integrations = patient
    api = integrations.client()
    with receiver() as down:
        where = "/restart"
        down.script[where] = [503]
        sub = new_subscription(api, down.url + where, ["restart.test"])
        sent = [event("restart.test", n=n) for n in range(5)]
        for e in sent:
            created(api.post("/events", json=e))
        wait_until(lambda: len(down.at(where)) >= 5, 30, "first attempts")

        integrations.restart()
        api = integrations.client()
        pending = deliveries(api, sub["id"], status="pending")
        assert len(pending) == 5, pending

        down.script[where] = [200]
        settled(api, sub["id"], 5, "succeeded")
        delivered = {r.headers["webhook-id"] for r in down.at(where) if r.headers}
        assert delivered == {e["id"] for e in sent}
