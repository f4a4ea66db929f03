"""The source of an ingested event is bound to its publisher: a service publishes
as itself, an admin as anyone, and nobody else can make subscribers receive a
signed event that claims to come from a platform service."""

from __future__ import annotations

import httpx

from tests.service.integrations.conftest import CRM_SERVICE_API_KEY
from tests.service.integrations.helpers import created, event
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def client(integrations: ServiceProcess, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=integrations.url, headers=headers, timeout=30.0)


def as_caller(integrations: ServiceProcess, subject: str, role: str = "editor") -> httpx.Client:
    return client(
        integrations, {"Authorization": f"Bearer {integrations.token(role, subject=subject)}"}
    )


def test_an_editor_cannot_forge_a_platform_event(integrations: ServiceProcess) -> None:
    forged = event("shipment.status_changed", shipment_id=1, to="delivered") | {
        "source": "logistics"
    }
    problem = assert_problem(
        as_caller(integrations, "dev").post("/events", json=forged), 403, "source", "forbidden"
    )
    assert "logistics" in problem["detail"]
    # Nothing was stored, so nothing was fanned out to subscribers.
    assert integrations.client().get(f"/events/{forged['id']}").status_code == 404
    # Not as an unknown source either: only services and admins publish.
    other = event("made.up") | {"source": "dev"}
    assert_problem(as_caller(integrations, "dev").post("/events", json=other), 403, "source")


def test_a_service_publishes_as_itself_only(integrations: ServiceProcess) -> None:
    logistics = as_caller(integrations, "service:logistics")
    own = event("shipment.status_changed", shipment_id=2) | {"source": "logistics"}
    assert created(logistics.post("/events", json=own))["duplicate"] is False
    assert integrations.client().get(f"/events/{own['id']}").json()["source"] == "logistics"

    as_crm = event("lead.converted", lead_id=1) | {"source": "crm"}
    problem = assert_problem(logistics.post("/events", json=as_crm), 403, "source")
    assert "the logistics service" in problem["detail"]
    # A person whose subject merely contains the word is not the service.
    assert_problem(
        as_caller(integrations, "service:").post("/events", json=own | {"id": "evt_x1"}), 403
    )
    assert_problem(
        as_caller(integrations, "logistics").post("/events", json=own | {"id": "evt_x2"}), 403
    )


def test_a_service_api_key_publishes_as_the_service_it_is_named_for(
    integrations: ServiceProcess,
) -> None:
    crm = client(integrations, {"X-API-Key": CRM_SERVICE_API_KEY})
    assert created(crm.post("/events", json=event("lead.converted", lead_id=2) | {"source": "crm"}))
    assert_problem(
        crm.post("/events", json=event("shipment.status_changed") | {"source": "logistics"}), 403
    )


def test_an_admin_may_publish_as_any_source(integrations: ServiceProcess) -> None:
    admin = as_caller(integrations, "ops-backfill", role="admin")
    assert created(
        admin.post("/events", json=event("shipment.status_changed") | {"source": "logistics"})
    )


def test_an_events_traceparent_is_w3c_or_refused(integrations: ServiceProcess) -> None:
    """An outbox relay sends the traceparent of the request that published the event
    (docs/observability.md); anything else in that field is refused, nothing stored."""
    logistics = as_caller(integrations, "service:logistics")
    base = event("shipment.status_changed", shipment_id=3) | {"source": "logistics"}
    for bad in ("4bf92f3577b34da6a3ce929d0e0e4736", "00-4BF92F35-00f067aa0ba902b7-01", ""):
        refused = base | {"id": f"evt_tp_{len(bad)}", "traceparent": bad}
        assert_problem(logistics.post("/events", json=refused), 422, "traceparent")
        assert integrations.client().get(f"/events/{refused['id']}").status_code == 404
    good = base | {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert created(logistics.post("/events", json=good))["duplicate"] is False
