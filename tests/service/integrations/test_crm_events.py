"""The CRM's ``lead.converted`` event through its transactional outbox, relayed
to the integrations service and delivered to a real subscriber, exactly once
however often the lead is converted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.service.crm.helpers import email, won_lead
from tests.service.integrations.conftest import publishing
from tests.service.integrations.helpers import new_subscription, unique
from tests.service.integrations.peers import Receiver, wait_until
from tests.support.servers import ServiceProcess


@dataclass
class Platform:
    integrations: ServiceProcess
    crm: ServiceProcess


@pytest.fixture(scope="module")
def platform(backend: str, request: pytest.FixtureRequest) -> Iterator[Platform]:
    with publishing("crm", backend, request) as (integrations, crm):
        yield Platform(integrations, crm)


def test_converting_a_lead_publishes_lead_converted_once(
    platform: Platform, hooks: Receiver
) -> None:
    where = "/" + unique("converted")
    new_subscription(platform.integrations.client(), hooks.url + where, ["lead.converted"])
    api = platform.crm.client()
    company = unique("Acme")
    lead = won_lead(api, name="Ravi Menon", email=email(), company=company)

    first = api.post(f"/leads/{lead['id']}/convert")
    assert first.status_code == 201, first.text
    customer_id = first.json()["customer"]["id"]
    again = api.post(f"/leads/{lead['id']}/convert")
    assert again.status_code == 200 and again.json()["customer"]["id"] == customer_id

    def received() -> list[dict]:
        r = platform.integrations.client().get(
            "/events", params={"type": "lead.converted", "limit": 500}
        )
        assert r.status_code == 200, r.text
        return [e for e in r.json()["items"] if e["data"]["lead_id"] == lead["id"]]

    got = wait_until(received, 30, "lead.converted at the integrations service")
    delivered = wait_until(lambda: hooks.at(where), 30, "lead.converted at the subscriber")
    # Give the relay time to send a second event, were there one.
    time.sleep(1.0)
    got = received()
    assert len(got) == 1
    event = got[0]
    assert event["source"] == "crm"
    assert event["data"] == {
        "lead_id": lead["id"],
        "customer_id": customer_id,
        "name": "Ravi Menon",
        "email": lead["email"],
        "company": company,
    }
    delivered = hooks.at(where)
    assert [d.json["id"] for d in delivered] == [event["id"]]
    assert delivered[0].json["data"] == event["data"]


def test_a_refused_conversion_publishes_nothing(platform: Platform) -> None:
    """A conversion that fails (the lead has no email) rolls back its event with it."""
    api = platform.crm.client()
    lead = won_lead(api, name=unique("NoMail"), email=None)
    assert api.post(f"/leads/{lead['id']}/convert").status_code == 409
    # Something converted afterwards is relayed; the refused one must not have been.
    later = won_lead(api, name=unique("Later"), email=email())
    assert api.post(f"/leads/{later['id']}/convert").status_code == 201

    def lead_ids() -> set[int]:
        r = platform.integrations.client().get(
            "/events", params={"type": "lead.converted", "limit": 500}
        )
        return {e["data"]["lead_id"] for e in r.json()["items"]}

    wait_until(lambda: later["id"] in lead_ids(), 30, "the later conversion's event")
    assert lead["id"] not in lead_ids()
