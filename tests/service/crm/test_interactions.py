"""Interactions over real HTTP: each customer's timeline and the list across customers."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from tests.service.crm.helpers import at, created, new_customer, total, unique
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def record(api: httpx.Client, customer_id: int, **fields: object) -> dict:
    return created(
        api.post(
            f"/customers/{customer_id}/interactions",
            json={"kind": "call", "subject": "Hi", **fields},
        )
    )


def as_user(crm: ServiceProcess, subject: str) -> httpx.Client:
    return httpx.Client(
        base_url=crm.url,
        headers={"Authorization": f"Bearer {crm.token('editor', subject=subject)}"},
    )


class TestTimeline:
    def test_author_is_the_caller_and_time_defaults_to_now(self, crm: ServiceProcess) -> None:
        api = crm.client()
        customer = new_customer(api)
        before = dt.datetime.now(dt.UTC)
        r = api.post(
            f"/customers/{customer['id']}/interactions",
            json={"kind": "meeting", "subject": "Kick-off", "notes": "Agenda"},
        )
        assert r.status_code == 201, r.text
        interaction = r.json()
        assert r.headers["location"] == f"/interactions/{interaction['id']}"
        assert (interaction["author"], interaction["kind"], interaction["notes"]) == (
            "tester",
            "meeting",
            "Agenda",
        )
        assert (
            before - dt.timedelta(seconds=5)
            <= at(interaction["occurred_at"])
            <= dt.datetime.now(dt.UTC)
        )
        assert api.get(f"/interactions/{interaction['id']}").json() == interaction

        with as_user(crm, "alice@bhiv") as alice:
            assert record(alice, customer["id"])["author"] == "alice@bhiv"

    def test_a_reference_is_recorded_once_per_customer(self, crm: ServiceProcess) -> None:
        """A repeated request with the same reference is a 409 naming it, nothing added;
        another customer may use the same reference; it can be looked up."""
        api = crm.client()
        one, two = new_customer(api), new_customer(api)
        ref = unique("order-SO")
        first = record(api, one["id"], reference=ref)
        assert first["reference"] == ref
        body = assert_problem(
            api.post(
                f"/customers/{one['id']}/interactions",
                json={"kind": "note", "subject": "Again", "reference": ref},
            ),
            409,
            field="reference",
            kind="conflict",
        )
        assert [e["type"] for e in body["errors"]] == ["unique"]
        assert total(api, f"/customers/{one['id']}/interactions") == 1
        assert record(api, two["id"], reference=ref)["reference"] == ref
        found = api.get(f"/customers/{one['id']}/interactions", params={"reference": ref})
        assert [i["id"] for i in found.json()["items"]] == [first["id"]]
        assert record(api, one["id"])["reference"] is None  # optional, and not unique when absent
        assert record(api, one["id"])["reference"] is None
        assert_problem(
            api.post(
                f"/customers/{one['id']}/interactions",
                json={"kind": "note", "subject": "Long", "reference": "x" * 101},
            ),
            422,
            field="reference",
        )

    def test_explicit_time_is_stored_in_utc(self, crm: ServiceProcess) -> None:
        api = crm.client()
        customer = new_customer(api)
        interaction = record(api, customer["id"], occurred_at="2026-03-01T10:30:00+05:30")
        assert at(interaction["occurred_at"]) == dt.datetime(2026, 3, 1, 5, 0, tzinfo=dt.UTC)
        assert interaction["occurred_at"].endswith("Z")

    def test_timeline_is_newest_first_and_filters_by_kind(self, crm: ServiceProcess) -> None:
        api = crm.client()
        customer = new_customer(api)
        old = record(api, customer["id"], kind="email", occurred_at="2025-01-01T09:00:00Z")
        new = record(api, customer["id"], kind="note", occurred_at="2025-06-01T09:00:00Z")
        mid = record(api, customer["id"], kind="email", occurred_at="2025-03-01T09:00:00Z")
        new_customer_noise = new_customer(api)
        record(api, new_customer_noise["id"])

        timeline = api.get(f"/customers/{customer['id']}/interactions").json()
        assert [i["id"] for i in timeline["items"]] == [new["id"], mid["id"], old["id"]]
        emails = api.get(
            f"/customers/{customer['id']}/interactions",
            params={"kind": "email", "sort": "occurred_at"},
        ).json()
        assert [i["id"] for i in emails["items"]] == [old["id"], mid["id"]]

    def test_unknown_customer_is_404_and_records_nothing(self, crm: ServiceProcess) -> None:
        api = crm.client()
        before = total(api, "/interactions")
        assert_problem(
            api.post("/customers/999999/interactions", json={"kind": "call", "subject": "Hi"}), 404
        )
        assert_problem(api.get("/customers/999999/interactions"), 404)
        assert_problem(api.get("/interactions/999999"), 404)
        assert total(api, "/interactions") == before

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"kind": "fax"}, "kind"),
            ({"subject": ""}, "subject"),
            ({"subject": None}, "subject"),
            ({"notes": "x" * 20_001}, "notes"),
            ({"occurred_at": "2026-03-01T10:30:00"}, "occurred_at"),
            ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at"),
            ({"occurred_at": "yesterday"}, "occurred_at"),
            ({"author": "someone-else"}, "author"),
        ],
    )
    def test_bad_input_is_422_and_records_nothing(
        self, crm: ServiceProcess, body: dict, field: str
    ) -> None:
        api = crm.client()
        customer = new_customer(api)
        r = api.post(
            f"/customers/{customer['id']}/interactions",
            json={"kind": "call", "subject": "Hi", **body},
        )
        assert_problem(r, 422, field)
        assert total(api, f"/customers/{customer['id']}/interactions") == 0


class TestAcrossCustomers:
    def test_date_range_customer_and_author_filters(self, crm: ServiceProcess) -> None:
        api = crm.client()
        a, b = new_customer(api), new_customer(api)
        # A year no other test uses, so the range holds only these.
        in_range = [
            record(api, a["id"], occurred_at="2031-02-01T00:00:00Z"),
            record(api, b["id"], occurred_at="2031-02-10T12:00:00Z"),
        ]
        record(api, a["id"], occurred_at="2031-03-01T00:00:00Z")  # the end is exclusive
        record(api, b["id"], occurred_at="2031-01-31T23:59:59Z")
        user = unique("bob")
        with as_user(crm, user) as bob:
            by_bob = record(bob, b["id"], occurred_at="2031-02-20T00:00:00+01:00")

        window = {
            "occurred_from": "2031-02-01T00:00:00Z",
            "occurred_to": "2031-03-01T00:00:00Z",
            "sort": "occurred_at",
        }
        listed = api.get("/interactions", params=window).json()
        assert [i["id"] for i in listed["items"]] == [
            in_range[0]["id"],
            in_range[1]["id"],
            by_bob["id"],
        ]
        assert [
            i["id"]
            for i in api.get("/interactions", params={**window, "customer_id": a["id"]}).json()[
                "items"
            ]
        ] == [in_range[0]["id"]]
        assert [
            i["id"] for i in api.get("/interactions", params={"author": user}).json()["items"]
        ] == [by_bob["id"]]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            (
                {"occurred_from": "2031-02-01T00:00:00Z", "occurred_to": "2031-01-01T00:00:00Z"},
                "occurred_to",
            ),
            ({"occurred_from": "2031-02-01T00:00:00"}, "occurred_from"),
            ({"occurred_to": "9999-12-31T23:59:59-05:00"}, "occurred_to"),
            ({"kind": "fax"}, "kind"),
            ({"sort": "author"}, "sort"),
            ({"customer_id": 0}, "customer_id"),
            ({"author": "a\u0000b"}, "author"),
        ],
    )
    def test_bad_query_is_422(self, crm: ServiceProcess, params: dict, field: str) -> None:
        assert_problem(crm.client().get("/interactions", params=params), 422, field)
