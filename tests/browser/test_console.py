"""The web console in a real browser, against the real platform (tests/browser/conftest.py).

Each test does what an operator would: signs in with a pasted token or API key,
reads a page, presses a button, and checks what the page shows. The data is
made through the gateway's API, as any client would make it. A screenshot of
every page is saved in tests/browser/artifacts/.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from tests.browser.conftest import VIEWER_KEY, Platform, sign_in
from tests.service.integrations.peers import receiver
from tests.support.browser import screenshot

SERVICES = ("integrations", "llm-query", "logistics", "crm", "agent-orchestration", "gateway")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def _define(api: httpx.Client, name: str, *steps: dict[str, Any]) -> None:
    _created(api.post("/api/agents/workflows", json={"name": name, "steps": list(steps)}))


def _wait(fetch: Any, done: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last value: {value}"
        time.sleep(0.2)


def test_sign_in_and_see_every_module(page: Any, platform: Platform) -> None:
    page.goto(platform.console)
    # Signed out, the page shows the form and nothing else.
    assert page.locator("#sign-in").is_visible() and not page.locator("#content").is_visible()
    page.get_by_label("Token or API key").fill("not-a-valid-credential")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("That token or API key was not accepted.").wait_for()

    token = platform.token("admin")
    sign_in(page, platform, token)
    assert page.locator("#who-text").inner_text() == "console-tester (admin)"
    for name in SERVICES:
        page.locator(f'#platform-graph g.node[data-id="{name}"][data-state="up"]').wait_for()
    rows = page.locator("#services-table tbody tr")
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.service)")) == sorted(
        s for s in SERVICES if s != "gateway"
    )
    page.locator(
        '#services-table tr[data-service="logistics"] td:nth-child(3)', has_text="0.1.0"
    ).wait_for()
    # Kept in this tab's sessionStorage only, never in the page or in localStorage.
    assert page.evaluate("sessionStorage.getItem('bhiv.console.credential')") == token
    assert page.evaluate("localStorage.length") == 0
    assert token not in page.content()
    screenshot(page, "platform")

    # Reloading keeps the session; signing out forgets the credential.
    page.reload()
    page.locator("#who-text").wait_for(state="visible")
    page.get_by_role("button", name="Sign out").click()
    page.locator("#sign-in").wait_for(state="visible")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_viewer_api_key_signs_in_and_the_api_refuses_its_actions(
    page: Any, platform: Platform
) -> None:
    api = platform.api()
    name = _name("console-wait")
    _define(api, name, {"id": "pause", "type": "wait", "seconds": 600})
    run = _created(api.post("/api/agents/runs", json={"workflow": name}))

    sign_in(page, platform, VIEWER_KEY, path=f"workflows?run={run['id']}")
    assert page.locator("#who-text").inner_text() == "apikey:console-viewer (viewer)"
    # The button is offered (the API has the operation); the API decides who may use it.
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Confirm").click()
    page.locator("#status.error", has_text="HTTP 403").wait_for()
    assert api.get(f"/api/agents/runs/{run['id']}").json()["status"] == "running"

    # An admin's click does cancel it, and the page shows it without a reload.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Token or API key").fill(platform.token("admin"))
    page.get_by_role("button", name="Sign in").click()
    page.locator("#run-summary .chip", has_text="running").wait_for()
    page.get_by_role("button", name="Cancel").click()
    assert page.locator("#confirm-title").inner_text() == "Cancel a running run?"
    assert page.locator("#confirm-fields input").count() == 0
    page.get_by_role("button", name="Confirm").click()
    page.locator("#run-summary .chip", has_text="cancelled").wait_for()
    assert api.get(f"/api/agents/runs/{run['id']}").json()["status"] == "cancelled"


def test_a_run_whose_step_failed_shows_that_step_failed(page: Any, platform: Platform) -> None:
    api = platform.api()
    name = _name("console-fails")
    _define(
        api,
        name,
        {"id": "order", "type": "set", "value": {"sku": "W-1", "quantity": 3}},
        {
            "id": "check_stock",
            "type": "condition",
            "needs": ["order"],
            "expression": "steps.order.output.quantity > 5",
            "fail_message": "not enough stock for the order",
        },
        {"id": "ship", "type": "set", "needs": ["check_stock"], "value": "shipped"},
    )
    run = _created(api.post("/api/agents/runs", json={"workflow": name, "input": {"customer": 7}}))
    _wait(
        lambda: api.get(f"/api/agents/runs/{run['id']}").json(), lambda r: r["status"] == "failed"
    )

    sign_in(page, platform, path="workflows")
    page.get_by_label("Workflow").select_option(name)
    page.get_by_label("Status").select_option("failed")
    assert "status=failed" in page.url and f"workflow={name}" in page.url
    page.locator(f'#runs-table tr[data-run="{run["id"]}"]').wait_for()
    # The table re-renders as each filter applies: wait for the filtered rows.
    _wait(lambda: page.locator("#runs-table tbody tr").count(), lambda n: n == 1)
    screenshot(page, "workflows")

    page.get_by_role("link", name=f"#{run['id']}").click()
    graph = page.locator("#run-graph")
    graph.locator('g.node[data-id="check_stock"][data-state="failed"]').wait_for()
    assert graph.locator('g.node[data-id="order"]').get_attribute("data-state") == "succeeded"
    assert graph.locator('g.node[data-id="ship"]').get_attribute("data-state") in (
        "pending",
        "skipped",
    )
    # The graph's edges follow `needs`, left to right.
    assert graph.locator('path.edge[data-from="order"][data-to="check_stock"]').count() == 1
    assert (
        page.locator('#steps-table tr[data-step="check_stock"]').get_attribute("data-state")
        == "failed"
    )

    # By keyboard: focus the failed step's node, press Enter, read its details.
    graph.locator('g.node[data-id="check_stock"]').focus()
    page.keyboard.press("Enter")
    detail = page.locator("#step-detail")
    detail.wait_for(state="visible")
    assert "not enough stock for the order" in detail.inner_text()
    assert "steps.order.output.quantity > 5" in page.locator("#step-input").inner_text()
    # The step before it succeeded: its output is shown when it is chosen.
    graph.locator('g.node[data-id="order"]').click()
    page.locator("#step-title", has_text="Step order").wait_for()
    assert '"sku": "W-1"' in page.locator("#step-output").inner_text()
    graph.locator('g.node[data-id="check_stock"]').click()
    assert "run_failed" in page.locator("#run-history").inner_text()
    page.evaluate("window.scrollTo(0, 0)")  # the run, its graph and its steps
    screenshot(page, "workflow-run", full_page=False)


def test_replay_a_dead_letter(page: Any, platform: Platform) -> None:
    api = platform.api()
    event_type = f"console.{uuid.uuid4().hex[:8]}"
    with receiver() as hooks:
        hooks.script["/hook"] = [500]
        sub = _created(
            api.post(
                "/api/integrations/subscriptions",
                json={
                    "url": hooks.url + "/hook",
                    "event_types": [event_type],
                    "description": "console test receiver",
                },
            )
        )
        _created(
            api.post(
                "/api/integrations/events",
                json={
                    "id": f"evt_{uuid.uuid4().hex}",
                    "type": event_type,
                    "source": "console-tests",
                    "occurred_at": "2026-12-01T10:00:00Z",
                    "data": {"order": 42},
                },
            )
        )
        deliveries = f"/api/integrations/subscriptions/{sub['id']}/deliveries"
        [dead] = _wait(
            lambda: api.get(deliveries).json()["items"],
            lambda items: items and items[0]["status"] == "dead",
        )
        _created(
            api.post("/api/integrations/webhook-sources", json={"name": _name("acme-payments")})
        )
        hooks.script["/hook"] = [200]  # the receiver is back

        sign_in(page, platform, path="integrations")
        row = page.locator(f'#subscriptions-table tr[data-subscription="{sub["id"]}"]')
        row.get_by_text("1 dead").wait_for()
        row.get_by_role("button", name="Dead letters").click()
        delivery = page.locator(f'#deliveries-table tr[data-delivery="{dead["id"]}"]')
        delivery.and_(page.locator('[data-state="dead"]')).wait_for()
        assert "HTTP 500" in delivery.inner_text()
        screenshot(page, "integrations")
        delivery.get_by_role("button", name="Replay").click()
        assert page.locator("#confirm-title").inner_text() == f"Replay delivery #{dead['id']}?"
        page.get_by_role("button", name="Confirm").click()
        # Replayed, it leaves the dead letters; the log shows it delivered.
        page.get_by_label("Status").select_option("")
        page.locator(
            f'#deliveries-table tr[data-delivery="{dead["id"]}"][data-state="succeeded"]'
        ).wait_for()
        assert len(hooks.at("/hook")) == 3  # two failed attempts, then the replay
    assert api.get(f"/api/integrations/deliveries/{dead['id']}").json()["replays"] == 1


def test_logistics_crm_and_llm_pages(page: Any, platform: Platform) -> None:
    api = platform.api()
    sku = _name("LOW").upper()
    _created(
        api.post(
            "/api/logistics/inventory",
            json={
                "sku": sku,
                "name": "Console widget",
                "quantity": 2,
                "reorder_level": 10,
            },
        )
    )
    _created(
        api.post(
            "/api/crm/leads", json={"name": "Ada Console", "company": "Globex", "source": "website"}
        )
    )
    for model in ("primary", "backup", "primary"):
        # Never a cache hit; letters only (a run of digits can look like PII to the filter).
        unique = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:12])
        prompt = f"Say hello to the console from {model} {unique}"
        _created(api.post("/api/llm/query", json={"prompt": prompt, "model": model}))

    sign_in(page, platform, path="glance")
    page.locator("#low-stock-table tbody th", has_text=sku).wait_for()
    page.locator('#shipments-table tr[data-status="in_transit"]').wait_for()
    assert int(page.locator('#leads-table tr[data-stage="new"] td').first.inner_text()) >= 1
    # "JSON" shows the API's own answer, fetched with the signed-in credential.
    page.locator("#stock-title ~ p a.json").click()
    page.locator("#json-title", has_text="GET /api/logistics/alerts/reorder").wait_for()
    assert sku in page.locator("#json-body").inner_text()
    screenshot(page, "glance")

    page.get_by_role("link", name="LLM").click()
    page.locator("#usage-chart svg rect.bar").first.wait_for()
    page.locator("#totals-table tbody th", has_text="primary").wait_for()
    page.get_by_label("Per", exact=True).select_option("tenant")
    page.locator("#totals-table tbody th", has_text="default").wait_for()
    page.locator("#budgets-table tbody td").first.wait_for()
    # Split by model, the day's bar is two stacked parts, one per model.
    page.locator("#usage-chart .legend li", has_text="backup").wait_for()
    assert page.locator("#usage-chart svg rect.bar").count() == 2
    screenshot(page, "llm")
    page.get_by_label("Split by").select_option("tenant")
    page.locator("#usage-chart .legend li", has_text="default").wait_for()
    assert page.locator("#usage-chart svg rect.bar").count() == 1


def test_the_graph_shows_a_stopped_service_without_a_reload(page: Any, platform: Platform) -> None:
    sign_in(page, platform)
    graph = page.locator("#platform-graph")
    graph.locator('g.node[data-id="crm"][data-state="up"]').wait_for()
    page.evaluate("window.stillTheSamePage = true")
    crm = platform.services["crm"]
    crm.stop()
    try:
        graph.locator('g.node[data-id="crm"][data-state="down"]').wait_for(timeout=30_000)
        page.locator(
            '#services-table tr[data-service="crm"] .service-status', has_text="down"
        ).wait_for()
        assert page.evaluate("window.stillTheSamePage") is True
        # The others are untouched.
        assert graph.locator('g.node[data-id="logistics"]').get_attribute("data-state") == "up"
        screenshot(page, "platform-down")
    finally:
        crm.start()
    graph.locator('g.node[data-id="crm"][data-state="up"]').wait_for(timeout=30_000)


def test_run_operations_follow_the_api_description(page: Any, platform: Platform) -> None:
    """Buttons come from the agents' OpenAPI: operations another version adds (a retry of a
    step, a named signal with a body) appear, with their parameters asked for."""
    sign_in(page, platform, path="workflows")
    doc = {
        "paths": {
            "/runs/{run_id}/cancel": {"post": {"summary": "Cancel a running run"}},
            "/runs/{run_id}/history": {"get": {"summary": "A run's history"}},
            "/runs/{run_id}/signals/{name}": {
                "post": {
                    "summary": "Send a signal",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Signal"}}
                        }
                    },
                }
            },
            "/runs/{run_id}/steps/{step_id}/retry": {"post": {"summary": "Retry a step"}},
            "/workflows": {"post": {"summary": "Create a workflow"}},
        },
        "components": {
            "schemas": {
                "Signal": {
                    "required": ["payload"],
                    "properties": {"payload": {"type": "object"}},
                }
            }
        },
    }
    ops = page.evaluate("doc => BhivWorkflows.operationsFrom(doc)", doc)
    assert [(o["name"], o["step"], o["fields"]) for o in ops] == [
        ("cancel", False, []),
        ("signals", False, ["name"]),
        ("steps retry", True, []),
    ]
    assert ops[1]["body"] is not None and '"payload": {}' in ops[1]["body"]
    path = page.evaluate(
        "op => BhivWorkflows.operationPath(op, {run_id: 7, step_id: 'ship', name: 'go%2Fnow'})",
        ops[2],
    )
    assert path == "api/agents/runs/7/steps/ship/retry"
    path = page.evaluate(
        "op => BhivWorkflows.operationPath(op, {run_id: 7, name: 'go%2Fnow'})", ops[1]
    )
    assert path == "api/agents/runs/7/signals/go%2Fnow"
