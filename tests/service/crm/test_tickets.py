"""Support tickets over real HTTP: SLA due times, the workflow, comments, overdue."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pytest

from tests.service.crm.conftest import URGENT_SLA_SECONDS
from tests.service.crm.helpers import (
    at,
    in_parallel,
    new_customer,
    new_ticket,
    total,
    unique,
)
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess

# The documented defaults (docs/crm.md); urgent is shortened by the fixture.
SLA = {
    "urgent": dt.timedelta(seconds=URGENT_SLA_SECONDS),
    "high": dt.timedelta(hours=24),
    "medium": dt.timedelta(hours=72),
    "low": dt.timedelta(hours=168),
}


def move(api: httpx.Client, ticket_id: int, status: str, **extra: object) -> dict:
    r = api.post(f"/tickets/{ticket_id}/transitions", json={"status": status, **extra})
    assert r.status_code == 200, r.text
    return r.json()


class TestSla:
    @pytest.mark.parametrize("priority", list(SLA))
    def test_due_time_follows_the_priority(self, crm: ServiceProcess, priority: str) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"], priority=priority)
        assert ticket["status"] == "open" and ticket["sla_started_at"] == ticket["created_at"]
        assert at(ticket["due_at"]) - at(ticket["created_at"]) == SLA[priority]

    def test_default_priority_is_medium(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        assert ticket["priority"] == "medium"

    def test_a_new_priority_moves_the_due_time(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"], priority="low")
        r = api.patch(f"/tickets/{ticket['id']}", json={"priority": "high", "assignee": "agent-1"})
        assert r.status_code == 200, r.text
        assert at(r.json()["due_at"]) == at(ticket["sla_started_at"]) + SLA["high"]
        assert r.json()["assignee"] == "agent-1"

    def test_overdue_filter(self, crm: ServiceProcess) -> None:
        api = crm.client()
        customer = new_customer(api)
        late = new_ticket(api, customer["id"], priority="urgent")
        resolved = new_ticket(api, customer["id"], priority="urgent")
        move(api, resolved["id"], "resolved")
        on_time = new_ticket(api, customer["id"], priority="high")
        time.sleep(URGENT_SLA_SECONDS + 0.5)

        overdue = api.get(
            "/tickets", params={"customer_id": customer["id"], "overdue": True}
        ).json()
        assert [t["id"] for t in overdue["items"]] == [late["id"]] and overdue["items"][0][
            "overdue"
        ] is True
        others = api.get(
            "/tickets", params={"customer_id": customer["id"], "overdue": False, "sort": "id"}
        ).json()
        assert [t["id"] for t in others["items"]] == [resolved["id"], on_time["id"]]
        assert api.get(f"/tickets/{late['id']}").json()["overdue"] is True

        # Reopening starts a fresh window, so a reopened ticket is not overdue on arrival.
        move(api, late["id"], "resolved")
        reopened = move(api, late["id"], "open")
        assert reopened["overdue"] is False and at(reopened["sla_started_at"]) > at(
            late["created_at"]
        )


class TestWorkflow:
    def test_full_workflow_with_reopen(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"], priority="high")
        assert ticket["next_statuses"] == ["in_progress", "resolved", "waiting"]
        for status in ("in_progress", "waiting", "in_progress"):
            assert move(api, ticket["id"], status)["status"] == status

        resolved = move(api, ticket["id"], "resolved")
        assert resolved["resolved_at"] and resolved["resolution_seconds"] >= 0
        assert resolved["resolution_seconds"] == int(
            (at(resolved["resolved_at"]) - at(resolved["created_at"])).total_seconds()
        )
        closed = move(api, ticket["id"], "closed")
        assert closed["closed_at"] and closed["next_statuses"] == ["open"]

        reopened = move(api, ticket["id"], "open")
        assert (reopened["resolved_at"], reopened["closed_at"], reopened["resolution_seconds"]) == (
            None,
            None,
            None,
        )
        assert at(reopened["due_at"]) == at(reopened["sla_started_at"]) + SLA["high"]
        assert move(api, reopened["id"], "resolved")["status"] == "resolved"
        assert move(api, reopened["id"], "open")["status"] == "open"

    @pytest.mark.parametrize(
        ("path", "target", "current", "allowed"),
        [
            ((), "closed", "open", ["in_progress", "resolved", "waiting"]),
            ((), "open", "open", ["in_progress", "resolved", "waiting"]),
            (("in_progress",), "open", "in_progress", ["resolved", "waiting"]),
            (("resolved",), "waiting", "resolved", ["closed", "open"]),
            (("resolved", "closed"), "resolved", "closed", ["open"]),
        ],
    )
    def test_illegal_transition_is_409_with_current_and_allowed(
        self,
        crm: ServiceProcess,
        path: tuple[str, ...],
        target: str,
        current: str,
        allowed: list[str],
    ) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        for status in path:
            move(api, ticket["id"], status)
        before = api.get(f"/tickets/{ticket['id']}").json()
        body = assert_problem(
            api.post(f"/tickets/{ticket['id']}/transitions", json={"status": target}), 409
        )
        assert (body["current"], body["allowed"]) == (current, allowed)
        assert api.get(f"/tickets/{ticket['id']}").json() == before

    def test_concurrent_resolves_apply_once(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        responses = in_parallel(
            crm, [("POST", f"/tickets/{ticket['id']}/transitions", {"status": "resolved"})] * 10
        )
        assert sorted(r.status_code for r in responses) == [200] + [409] * 9

    def test_status_cannot_be_patched(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        assert_problem(
            api.patch(f"/tickets/{ticket['id']}", json={"status": "closed"}), 422, "status"
        )
        assert_problem(
            api.patch(f"/tickets/{ticket['id']}", json={"priority": None}), 422, "priority"
        )
        assert api.get(f"/tickets/{ticket['id']}").json() == ticket


class TestComments:
    def test_comments_and_transition_comments(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        r = api.post(
            f"/tickets/{ticket['id']}/comments",
            json={"body": "Checked the logs.", "internal": True},
        )
        assert r.status_code == 201, r.text
        assert (r.json()["author"], r.json()["internal"]) == ("tester", True)
        move(api, ticket["id"], "waiting", comment="Waiting for the customer's reply.")

        comments = api.get(f"/tickets/{ticket['id']}/comments").json()
        assert [(c["body"], c["internal"]) for c in comments["items"]] == [
            ("Checked the logs.", True),
            ("Waiting for the customer's reply.", False),
        ]
        public = api.get(f"/tickets/{ticket['id']}/comments", params={"internal": False}).json()
        assert [c["body"] for c in public["items"]] == ["Waiting for the customer's reply."]

    def test_a_closed_ticket_takes_no_comments(self, crm: ServiceProcess) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        move(api, ticket["id"], "resolved")
        move(api, ticket["id"], "closed")
        assert_problem(api.post(f"/tickets/{ticket['id']}/comments", json={"body": "late"}), 409)
        assert total(api, f"/tickets/{ticket['id']}/comments") == 0

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"body": ""}, "body"),
            ({"body": "  "}, "body"),
            ({}, "body"),
            ({"body": "x", "author": "y"}, "author"),
        ],
    )
    def test_bad_comment_is_422(self, crm: ServiceProcess, body: dict, field: str) -> None:
        api = crm.client()
        ticket = new_ticket(api, new_customer(api)["id"])
        assert_problem(api.post(f"/tickets/{ticket['id']}/comments", json=body), 422, field)
        assert total(api, f"/tickets/{ticket['id']}/comments") == 0

    def test_unknown_ticket_is_404(self, crm: ServiceProcess) -> None:
        api = crm.client()
        assert_problem(api.get("/tickets/999999"), 404)
        assert_problem(api.get("/tickets/999999/comments"), 404)
        assert_problem(api.post("/tickets/999999/comments", json={"body": "x"}), 404)
        assert_problem(api.post("/tickets/999999/transitions", json={"status": "resolved"}), 404)


class TestCreateAndList:
    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"customer_id": 999999}, "customer_id"),
            ({"customer_id": 0}, "customer_id"),
            ({"priority": "p1"}, "priority"),
            ({"subject": ""}, "subject"),
            ({"status": "closed"}, "status"),
            ({"due_at": "2030-01-01T00:00:00Z"}, "due_at"),
            ({"description": "a\u0000b"}, "description"),
        ],
    )
    def test_bad_ticket_is_422_and_changes_nothing(
        self, crm: ServiceProcess, body: dict, field: str
    ) -> None:
        api = crm.client()
        customer = new_customer(api)
        before = total(api, "/tickets")
        assert_problem(
            api.post("/tickets", json={"customer_id": customer["id"], "subject": "x", **body}),
            422,
            field,
        )
        assert total(api, "/tickets") == before

    def test_filters_and_sorting(self, crm: ServiceProcess) -> None:
        api = crm.client()
        customer = new_customer(api)
        agent = unique("agent")
        low = new_ticket(
            api, customer["id"], priority="low", assignee=agent, subject="Slow dashboard"
        )
        urgent = new_ticket(api, customer["id"], priority="urgent", subject="Site down")
        high = new_ticket(
            api, customer["id"], priority="high", assignee=agent, subject="Wrong invoice"
        )
        move(api, high["id"], "in_progress")

        by_priority = api.get(
            "/tickets", params={"customer_id": customer["id"], "sort": "-priority"}
        ).json()
        assert [t["id"] for t in by_priority["items"]] == [urgent["id"], high["id"], low["id"]]
        assert [
            t["id"]
            for t in api.get("/tickets", params={"assignee": agent, "sort": "id"}).json()["items"]
        ] == [
            low["id"],
            high["id"],
        ]
        statuses = api.get(
            "/tickets",
            params=[
                ("customer_id", customer["id"]),
                ("status", "in_progress"),
                ("status", "waiting"),
            ],
        )
        assert [t["id"] for t in statuses.json()["items"]] == [high["id"]]
        priorities = api.get(
            "/tickets",
            params=[("customer_id", customer["id"]), ("priority", "low"), ("priority", "urgent")],
        )
        assert {t["id"] for t in priorities.json()["items"]} == {low["id"], urgent["id"]}
        assert [
            t["id"]
            for t in api.get(
                "/tickets", params={"customer_id": customer["id"], "q": "INVOICE"}
            ).json()["items"]
        ] == [high["id"]]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"status": "done"}, "status.0"),
            ({"priority": "p0"}, "priority.0"),
            ({"sort": "subject"}, "sort"),
            ({"overdue": "maybe"}, "overdue"),
            ({"q": "\u0000"}, "q"),
        ],
    )
    def test_bad_query_is_422(self, crm: ServiceProcess, params: dict, field: str) -> None:
        assert_problem(crm.client().get("/tickets", params=params), 422, field)
