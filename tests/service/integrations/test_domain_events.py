"""Logistics' domain events through its transactional outbox, relayed to the
integrations service and fanned out to a real subscriber — including while the
integrations service is down and Logistics stops before it could relay."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.service.integrations.conftest import publishing
from tests.service.integrations.helpers import created, new_subscription, unique
from tests.service.integrations.peers import Receiver, wait_until
from tests.support.servers import ServiceProcess


@dataclass
class Platform:
    integrations: ServiceProcess
    logistics: ServiceProcess


@pytest.fixture(scope="module")
def platform(backend: str, request: pytest.FixtureRequest) -> Iterator[Platform]:
    with publishing("logistics", backend, request) as (integrations, logistics):
        yield Platform(integrations, logistics)


def item(api: httpx.Client, **fields: object) -> dict:
    return created(api.post("/inventory", json={"sku": unique("SKU"), "name": "Widget", **fields}))


def events_of(receiver: Receiver, path: str, type: str) -> list[dict]:
    return [r.json for r in receiver.at(path) if r.json["type"] == type]


def test_low_stock_is_published_once_per_crossing(platform: Platform, hooks: Receiver) -> None:
    where = "/" + unique("low")
    new_subscription(platform.integrations.client(), hooks.url + where, ["inventory.low_stock"])
    api = platform.logistics.client()
    widget = item(api, quantity=10, reorder_level=4)

    def move(kind: str, quantity: int) -> None:
        r = api.post(
            f"/inventory/{widget['id']}/movements",
            json={"type": kind, "quantity": quantity, "reference": "SO-1"},
        )
        assert r.status_code == 201, r.text

    move("reservation", 5)  # available 5: above the level
    move("reservation", 1)  # available 4: crosses
    move("reservation", 1)  # available 3: still low, no new event
    move("release", 4)  # available 7: above again
    move("shipment", 4)  # on hand 6, available 3: crosses again
    got = wait_until(
        lambda: len(e := events_of(hooks, where, "inventory.low_stock")) >= 2 and e, 30, "2 events"
    )
    mine = sorted(
        (e for e in got if e["data"]["item_id"] == widget["id"]),
        key=lambda e: -e["data"]["available"],
    )
    assert [e["data"]["available"] for e in mine] == [4, 3]
    first = mine[0]
    assert first["source"] == "logistics" and first["data"]["sku"] == widget["sku"]
    assert (
        first["data"]["reorder_level"] == 4 and first["data"]["movement"]["type"] == "reservation"
    )


def test_every_shipment_transition_is_published(platform: Platform, hooks: Receiver) -> None:
    where = "/" + unique("ship")
    new_subscription(platform.integrations.client(), hooks.url + where, ["shipment.*"])
    api = platform.logistics.client()
    widget = item(api, quantity=5)
    reference = unique("SO")
    shipment = created(
        api.post(
            "/shipments",
            json={
                "reference": reference,
                "destination": "Pune",
                "lines": [{"sku": widget["sku"], "quantity": 2}],
            },
        )
    )
    for status in ("picked", "shipped", "in_transit", "delivered"):
        r = api.post(f"/shipments/{shipment['id']}/transitions", json={"status": status})
        assert r.status_code == 200, r.text
    assert (
        api.post(
            f"/shipments/{shipment['id']}/transitions", json={"status": "cancelled"}
        ).status_code
        == 409
    )
    got = wait_until(
        lambda: len(e := events_of(hooks, where, "shipment.status_changed")) >= 4 and e,
        30,
        "4 events",
    )
    # Deliveries run concurrently, so they may arrive in any order (docs/integrations.md).
    mine = [e["data"] for e in got if e["data"]["reference"] == reference]
    order = ["created", "picked", "shipped", "in_transit", "delivered"]
    assert sorted(((d["from"], d["to"]) for d in mine), key=lambda p: order.index(p[0])) == [
        ("created", "picked"),
        ("picked", "shipped"),
        ("shipped", "in_transit"),
        ("in_transit", "delivered"),
    ]


def test_events_wait_in_the_outbox_while_integrations_is_down(
    platform: Platform, hooks: Receiver
) -> None:
    """Integrations down, Logistics commits changes and then stops before it
    could relay them: once both are back, every event arrives, once."""
    where = "/" + unique("outage")
    new_subscription(platform.integrations.client(), hooks.url + where, ["shipment.status_changed"])
    platform.integrations.stop()

    api = platform.logistics.client()
    widget = item(api, quantity=5)
    references = [unique("OUT") for _ in range(3)]
    for reference in references:
        shipment = created(
            api.post(
                "/shipments",
                json={
                    "reference": reference,
                    "destination": "Goa",
                    "lines": [{"sku": widget["sku"], "quantity": 1}],
                },
            )
        )
        assert (
            api.post(
                f"/shipments/{shipment['id']}/transitions", json={"status": "picked"}
            ).status_code
            == 200
        )
    platform.logistics.stop()

    platform.integrations.start()
    platform.logistics.start()
    got = wait_until(
        lambda: (
            len(
                e := [
                    x
                    for x in events_of(hooks, where, "shipment.status_changed")
                    if x["data"]["reference"] in references
                ]
            )
            >= 3
            and e
        ),
        30,
        "the 3 events held in the outbox",
    )
    assert sorted(e["data"]["reference"] for e in got) == sorted(references)
    received = platform.integrations.client().get(
        "/events", params={"type": "shipment.status_changed", "limit": 500}
    )
    ids = [e["id"] for e in received.json()["items"] if e["data"]["reference"] in references]
    assert len(ids) == len(set(ids)) == 3
