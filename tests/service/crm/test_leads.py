"""Leads over real HTTP: the scored pipeline, transitions and conversion."""

from __future__ import annotations

import pytest

from tests.service.crm.helpers import (
    PIPELINE,
    email,
    in_parallel,
    new_customer,
    new_lead,
    total,
    unique,
    won_lead,
)
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def points(lead: dict) -> dict[str, int]:
    return {f["factor"]: f["points"] for f in lead["score_factors"]}


class TestScore:
    def test_score_is_explained_and_recomputed_on_every_change(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api, company="Globex", source="referral", expected_value="30000")
        assert lead["stage"] == "new" and lead["expected_value"] == "30000.00"
        assert points(lead) == {
            "stage": 0,
            "source": 20,
            "expected_value": 18,
            "email": 10,
            "phone": 0,
            "company": 10,
        }
        assert lead["score"] == 58 == sum(points(lead).values())
        assert {f["factor"]: f["max_points"] for f in lead["score_factors"]} == {
            "stage": 30,
            "source": 20,
            "expected_value": 25,
            "email": 10,
            "phone": 5,
            "company": 10,
        }

        r = api.patch(
            f"/leads/{lead['id']}", json={"phone": "+91 22 5555 0199", "expected_value": "100000"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["score"] == 58 + 5 + 7 and r.json()["stage"] == "new"
        assert api.get(f"/leads/{lead['id']}").json()["score"] == 70

        scores = []
        for stage in PIPELINE:
            scores.append(
                api.post(f"/leads/{lead['id']}/transitions", json={"stage": stage}).json()["score"]
            )
        assert scores == [80, 90, 100, 100]

    def test_a_lost_lead_scores_zero_and_keeps_its_reason(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api, source="partner", company="Initech")
        r = api.post(
            f"/leads/{lead['id']}/transitions",
            json={"stage": "lost", "lost_reason": "Chose a competitor"},
        )
        assert r.status_code == 200, r.text
        lost = r.json()
        assert (lost["stage"], lost["score"], lost["lost_reason"], lost["next_stages"]) == (
            "lost",
            0,
            "Chose a competitor",
            [],
        )
        assert set(points(lost).values()) == {0}

    def test_score_stays_consistent_under_concurrent_changes(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api)
        path = f"/leads/{lead['id']}"
        requests = [
            ("PATCH", path, {"expected_value": str(v), "company": f"C{v}"})
            for v in (0, 6000, 30000, 200000)
        ] * 3
        requests += [("POST", f"{path}/transitions", {"stage": s}) for s in PIPELINE[:3]]
        responses = in_parallel(crm, requests)
        assert {r.status_code for r in responses} <= {200, 409}
        final = api.get(path).json()
        assert final["score"] == sum(points(final).values())


class TestPipeline:
    def test_stage_by_stage_to_won(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = won_lead(api)
        assert lead["stage"] == "won" and lead["next_stages"] == [] and lead["lost_reason"] is None

    @pytest.mark.parametrize(
        ("path", "target", "current", "allowed"),
        [
            ((), "won", "new", ["contacted", "lost"]),
            ((), "qualified", "new", ["contacted", "lost"]),
            (("contacted",), "new", "contacted", ["lost", "qualified"]),
            (("contacted", "qualified", "proposal", "won"), "lost", "won", []),
            (("lost",), "new", "lost", []),
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
        lead = new_lead(api)
        for stage in path:
            assert (
                api.post(f"/leads/{lead['id']}/transitions", json={"stage": stage}).status_code
                == 200
            )
        before = api.get(f"/leads/{lead['id']}").json()
        body = assert_problem(
            api.post(f"/leads/{lead['id']}/transitions", json={"stage": target}), 409
        )
        assert (body["current"], body["allowed"]) == (current, allowed)
        assert body["type"].endswith("/illegal-transition")
        assert api.get(f"/leads/{lead['id']}").json() == before

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"stage": "contacted", "lost_reason": "why"}, "lost_reason"),
            ({"stage": "lost", "lost_reason": ""}, "lost_reason"),
            ({"stage": "closed"}, "stage"),
            ({}, "stage"),
        ],
    )
    def test_bad_transition_body_is_422(self, crm: ServiceProcess, body: dict, field: str) -> None:
        api = crm.client()
        lead = new_lead(api)
        assert_problem(api.post(f"/leads/{lead['id']}/transitions", json=body), 422, field)
        assert api.get(f"/leads/{lead['id']}").json() == lead

    def test_stage_cannot_be_patched(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api)
        assert_problem(api.patch(f"/leads/{lead['id']}", json={"stage": "won"}), 422, "stage")
        assert_problem(api.patch(f"/leads/{lead['id']}", json={"score": 100}), 422, "score")
        assert_problem(api.patch(f"/leads/{lead['id']}", json={"name": None}), 422, "name")
        assert api.get(f"/leads/{lead['id']}").json() == lead

    def test_concurrent_transitions_apply_once(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api)
        responses = in_parallel(
            crm, [("POST", f"/leads/{lead['id']}/transitions", {"stage": "contacted"})] * 10
        )
        assert sorted(r.status_code for r in responses) == [200] + [409] * 9

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"expected_value": -1}, "expected_value"),
            ({"expected_value": "1.234"}, "expected_value"),
            ({"expected_value": "lots"}, "expected_value"),
            ({"expected_value": "1e13"}, "expected_value"),
            ({"source": "tv"}, "source"),
            ({"email": "nope"}, "email"),
            ({"name": ""}, "name"),
            ({"phone": "12ab"}, "phone"),
            ({"notes": "x\u0000"}, "notes"),
            ({"stage": "won"}, "stage"),
        ],
    )
    def test_bad_lead_is_422_and_changes_nothing(
        self, crm: ServiceProcess, body: dict, field: str
    ) -> None:
        api = crm.client()
        before = total(api, "/leads")
        assert_problem(api.post("/leads", json={"name": "Ravi", **body}), 422, field)
        assert total(api, "/leads") == before

    def test_list_filters_and_sorting(self, crm: ServiceProcess) -> None:
        api = crm.client()
        owner = unique("rep")
        cold = new_lead(api, owner=owner, source="cold_call", email=None)
        warm = new_lead(api, owner=owner, source="referral", expected_value="50000")
        hot = won_lead(api, owner=owner, source="partner", expected_value="500000", company="Hooli")

        ranked = api.get("/leads", params={"owner": owner}).json()
        assert [x["id"] for x in ranked["items"]] == [hot["id"], warm["id"], cold["id"]]
        assert [
            x["id"]
            for x in api.get("/leads", params={"owner": owner, "sort": "-stage,id"}).json()["items"]
        ] == [
            hot["id"],
            cold["id"],
            warm["id"],
        ]
        only = api.get(
            "/leads",
            params=[("owner", owner), ("stage", "new"), ("stage", "won"), ("source", "referral")],
        )
        assert [x["id"] for x in only.json()["items"]] == [warm["id"]]
        ranged = api.get(
            "/leads",
            params={"owner": owner, "score_min": 10, "score_max": 89, "expected_value_min": "1"},
        )
        assert [x["id"] for x in ranged.json()["items"]] == [warm["id"]]
        assert (
            api.get("/leads", params={"q": "hooli", "owner": owner}).json()["items"][0]["id"]
            == hot["id"]
        )

        api.post(f"/leads/{hot['id']}/convert")
        assert [
            x["id"]
            for x in api.get("/leads", params={"owner": owner, "converted": True}).json()["items"]
        ] == [hot["id"]]
        assert hot["id"] not in [
            x["id"]
            for x in api.get("/leads", params={"owner": owner, "converted": False}).json()["items"]
        ]

    def test_delete(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = new_lead(api)
        assert api.delete(f"/leads/{lead['id']}").status_code == 204
        assert_problem(api.get(f"/leads/{lead['id']}"), 404)
        assert_problem(api.delete(f"/leads/{lead['id']}"), 404)


class TestConversion:
    def test_converting_twice_returns_the_same_customer(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = won_lead(api, company="Globex", phone="+91 22 5555 0199", owner="rep-7")
        first = api.post(f"/leads/{lead['id']}/convert")
        assert first.status_code == 201, first.text
        conversion = first.json()
        customer = conversion["customer"]
        assert (
            conversion["created"] is True
            and first.headers["location"] == f"/customers/{customer['id']}"
        )
        assert (
            customer["name"],
            customer["email"],
            customer["company"],
            customer["phone"],
            customer["owner"],
        ) == (
            lead["name"],
            lead["email"],
            "Globex",
            "+91 22 5555 0199",
            "rep-7",
        )
        assert (
            conversion["lead"]["customer_id"] == customer["id"]
            and conversion["lead"]["converted_at"]
        )

        again = api.post(f"/leads/{lead['id']}/convert")
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["customer"] == customer
        assert total(api, "/customers", q=lead["email"]) == 1

    def test_concurrent_converts_create_one_customer(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = won_lead(api)
        responses = in_parallel(crm, [("POST", f"/leads/{lead['id']}/convert", None)] * 20)
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 19 + [201], [
            r.text for r in responses if r.status_code not in (200, 201)
        ]
        assert len({r.json()["customer"]["id"] for r in responses}) == 1
        assert total(api, "/customers", q=lead["email"]) == 1

    @pytest.mark.parametrize("path", [(), ("contacted", "qualified", "proposal"), ("lost",)])
    def test_only_a_won_lead_converts(self, crm: ServiceProcess, path: tuple[str, ...]) -> None:
        api = crm.client()
        lead = new_lead(api)
        for stage in path:
            api.post(f"/leads/{lead['id']}/transitions", json={"stage": stage})
        before = total(api, "/customers")
        body = assert_problem(api.post(f"/leads/{lead['id']}/convert"), 409)
        assert body["current"] == (path[-1] if path else "new") and body["required"] == "won"
        assert total(api, "/customers") == before
        assert api.get(f"/leads/{lead['id']}").json()["converted_at"] is None

    def test_a_lead_without_email_is_refused_until_it_has_one(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = won_lead(api, email=None)
        body = assert_problem(api.post(f"/leads/{lead['id']}/convert"), 409)
        assert body["missing"] == ["email"]
        assert api.get(f"/leads/{lead['id']}").json()["converted_at"] is None
        api.patch(f"/leads/{lead['id']}", json={"email": email()})
        assert api.post(f"/leads/{lead['id']}/convert").status_code == 201

    def test_an_existing_customer_email_is_409_naming_that_customer(
        self, crm: ServiceProcess
    ) -> None:
        api = crm.client()
        customer = new_customer(api)
        lead = won_lead(api, email=customer["email"].upper())
        body = assert_problem(api.post(f"/leads/{lead['id']}/convert"), 409)
        assert body["customer_id"] == customer["id"] and body["errors"][0]["field"] == "email"
        after = api.get(f"/leads/{lead['id']}").json()
        assert (after["converted_at"], after["customer_id"]) == (None, None)
        assert total(api, "/customers", q=customer["email"]) == 1

    def test_a_converted_lead_is_kept(self, crm: ServiceProcess) -> None:
        api = crm.client()
        lead = won_lead(api)
        customer = api.post(f"/leads/{lead['id']}/convert").json()["customer"]
        body = assert_problem(api.delete(f"/leads/{lead['id']}"), 409)
        assert body["customer_id"] == customer["id"]

        # Deleting the customer unlinks the lead, which stays converted: no second customer.
        assert api.delete(f"/customers/{customer['id']}").status_code == 204
        after = api.get(f"/leads/{lead['id']}").json()
        assert after["customer_id"] is None and after["converted_at"] is not None
        assert_problem(api.post(f"/leads/{lead['id']}/convert"), 409)
        assert total(api, "/customers", q=lead["email"]) == 0

    def test_unknown_lead_is_404(self, crm: ServiceProcess) -> None:
        assert_problem(crm.client().post("/leads/999999/convert"), 404)
