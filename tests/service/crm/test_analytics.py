"""Analytics over real HTTP, on a service of its own so every figure is exact."""

from __future__ import annotations

import time

from tests.service.crm.conftest import URGENT_SLA_SECONDS
from tests.service.crm.helpers import new_customer, new_lead, new_ticket, won_lead
from tests.support.servers import ServiceProcess


def test_overview(crm: ServiceProcess) -> None:
    api = crm.client()
    empty = api.get("/analytics/overview").json()
    assert empty["pipeline"]["win_rate"] is None and empty["pipeline"]["conversion_rate"] is None
    assert empty["tickets"]["mean_resolution_seconds"] is None and empty["customers"]["total"] == 0

    a = new_customer(api)
    new_customer(api, status="inactive")
    new_customer(api, status="churned")
    new_lead(api, expected_value="1000.50")
    contacted = new_lead(api, expected_value="2000")
    api.post(f"/leads/{contacted['id']}/transitions", json={"stage": "contacted"})
    lost = new_lead(api, expected_value="999")
    api.post(f"/leads/{lost['id']}/transitions", json={"stage": "lost"})
    won = won_lead(api, expected_value="5000")
    won_lead(api, expected_value="7000")
    assert api.post(f"/leads/{won['id']}/convert").status_code == 201  # a fourth customer

    late = new_ticket(api, a["id"], priority="urgent")
    quick = new_ticket(api, a["id"], priority="low")
    slow = new_ticket(api, a["id"], priority="low")
    new_ticket(api, a["id"], priority="high")
    time.sleep(URGENT_SLA_SECONDS + 0.5)
    resolved = [
        api.post(f"/tickets/{t['id']}/transitions", json={"status": "resolved"}).json()
        for t in (quick, slow)
    ]
    api.post(f"/tickets/{slow['id']}/transitions", json={"status": "closed"})

    report = api.get("/analytics/overview").json()
    assert report["customers"] == {
        "total": 4,
        "by_status": {"active": 2, "inactive": 1, "churned": 1},
    }

    pipeline = report["pipeline"]
    assert [(s["stage"], s["leads"], s["value"]) for s in pipeline["by_stage"]] == [
        ("new", 1, "1000.50"),
        ("contacted", 1, "2000.00"),
        ("qualified", 0, "0.00"),
        ("proposal", 0, "0.00"),
        ("won", 2, "12000.00"),
        ("lost", 1, "999.00"),
    ]
    assert pipeline["open_value"] == "3000.50"
    assert (pipeline["leads"], pipeline["won"], pipeline["lost"], pipeline["converted"]) == (
        5,
        2,
        1,
        1,
    )
    assert pipeline["win_rate"] == round(2 / 3, 4) and pipeline["conversion_rate"] == 0.2

    tickets = report["tickets"]
    assert tickets["total"] == 4
    assert tickets["by_status"] == {
        "open": 2,
        "in_progress": 0,
        "waiting": 0,
        "resolved": 1,
        "closed": 1,
    }
    assert tickets["by_priority"] == {"low": 2, "medium": 0, "high": 1, "urgent": 1}
    assert tickets["overdue"] == 1 and late["priority"] == "urgent"
    assert tickets["resolved"] == 2
    expected_mean = sum(t["resolution_seconds"] for t in resolved) / 2
    assert tickets["mean_resolution_seconds"] == expected_mean >= URGENT_SLA_SECONDS
