"""The gateway in Kubernetes mode: it routes to the BhivModules of its namespace, as the
operator reports them, watched with its own read-only ServiceAccount."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.operator.conftest import (
    MANIFESTS,
    OperatorProcess,
    condition,
    get_json,
    wait_for,
)
from tests.support import browser
from tests.support.kube import service_account_kubeconfig
from tests.support.servers import service_process


def test_routes_follow_the_modules_of_its_namespace(
    kubectl: Callable[..., Any],
    namespace: str,
    operator: OperatorProcess,
    modules: Any,
    tmp_path: Path,
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(MANIFESTS / "gateway" / "rbac.yaml"))
    config = service_account_kubeconfig(
        kubectl, namespace, "bhiv-gateway", tmp_path / "gateway.kubeconfig"
    )
    modules("logistics", service="logistics")
    wait_for(
        lambda: (
            condition(get_json(kubectl, "bm", "logistics", "-n", namespace), "Ready").get("status")
            == "True"
        ),
        "logistics Ready",
    )

    gateway = service_process(
        "gateway",
        tmp_path,
        None,
        BHIV_GATEWAY_DISCOVERY="kubernetes",
        BHIV_GATEWAY_NAMESPACE=namespace,
        KUBECONFIG=str(config),
    ).start()
    try:
        api = gateway.client("viewer")

        def routed() -> dict[str, list[str]]:
            services = api.get("/services").json()["services"]
            return {s["name"]: [i["url"] for i in s["instances"]] for s in services}

        found = wait_for(lambda: (r := routed()) and "logistics" in r and r, "logistics discovered")
        assert found["logistics"] == [f"http://logistics.{namespace}.svc.cluster.local:8001"]
        assert "crm" not in found

        # A module added later is routed without a restart; a deleted one goes away.
        modules("crm", service="crm", depends_on=["logistics"])
        wait_for(lambda: "crm" in routed(), "crm discovered after it was created")

        # /services also shows each module as the operator reports it (the console's graph).
        def shown() -> dict[str, Any]:
            return {m["name"]: m for m in api.get("/services").json()["modules"]}

        views = wait_for(
            lambda: (v := shown()) and v.get("crm", {}).get("conditions") and v, "crm's status"
        )
        assert views["crm"]["dependsOn"] == ["logistics"]
        assert views["crm"]["image"] == "bhiv-core:test"
        ready = {c["type"]: c["status"] for c in views["logistics"]["conditions"]}
        assert ready["Ready"] == "True" and views["logistics"]["replicasReady"] == "1/1"
        assert views["logistics"]["waitingFor"] == []
        kubectl("delete", "bm", "crm", "-n", namespace)
        wait_for(lambda: "crm" not in routed(), "crm gone after it was deleted")
        # Routed, but its pods are simulated: the gateway answers for it, never hangs.
        r = api.get("/api/logistics/health", timeout=30)
        assert r.status_code in (502, 503, 504), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        # Its ServiceAccount reads modules and nothing else.
        sa = f"system:serviceaccount:{namespace}:bhiv-gateway"
        assert (
            kubectl(
                "auth", "can-i", "watch", "bhivmodules", "-n", namespace, "--as", sa, check=False
            ).stdout.strip()
            == "yes"
        )
        assert (
            kubectl(
                "auth", "can-i", "get", "secrets", "-n", namespace, "--as", sa, check=False
            ).stdout.strip()
            == "no"
        )
    finally:
        gateway.stop()


def test_the_console_draws_the_modules_and_what_they_wait_for(
    kubectl: Callable[..., Any],
    namespace: str,
    operator: OperatorProcess,
    modules: Any,
    tmp_path: Path,
) -> None:
    """The web console in Kubernetes mode, in Chromium: the graph from dependsOn, states from
    the modules' conditions, and a module waiting for one that does not exist."""
    with browser.chromium() as chromium:
        kubectl("apply", "-n", namespace, "-f", str(MANIFESTS / "gateway" / "rbac.yaml"))
        config = service_account_kubeconfig(
            kubectl, namespace, "bhiv-gateway", tmp_path / "gateway.kubeconfig"
        )
        modules("integrations", service="integrations")
        modules("logistics", service="logistics", depends_on=["integrations"])
        modules("crm", service="crm", depends_on=["ghost"])

        def ready(name: str) -> bool:
            body = get_json(kubectl, "bm", name, "-n", namespace)
            return condition(body, "Ready").get("status") == "True"

        for name in ("integrations", "logistics"):
            wait_for(lambda n=name: ready(n), f"{name} Ready")
        gateway = service_process(
            "gateway",
            tmp_path,
            None,
            BHIV_GATEWAY_DISCOVERY="kubernetes",
            BHIV_GATEWAY_NAMESPACE=namespace,
            KUBECONFIG=str(config),
        ).start()
        try:
            with browser.console_page(chromium) as page:
                browser.sign_in(page, gateway.url + "/console/", gateway.token("viewer"))
                graph = page.locator("#platform-graph")
                graph.locator('g.node[data-id="crm"][data-state="waiting"]').wait_for()
                crm = graph.locator('g.node[data-id="crm"]')
                assert crm.get_attribute("aria-label") == "crm: waiting (for ghost)"
                for name in ("integrations", "logistics"):
                    graph.locator(f'g.node[data-id="{name}"][data-state="up"]').wait_for()
                # Laid out by dependsOn: integrations first, logistics after it.
                edge = 'path.edge[data-from="integrations"][data-to="logistics"]'
                assert graph.locator(edge).count() == 1
                assert page.locator("#graph-basis").inner_text() == "the BhivModules' dependsOn"
                row = page.locator('#services-table tr[data-service="logistics"]')
                row.get_by_text("replicas 1/1").wait_for()
                assert "Ready=True" in row.inner_text()
                browser.screenshot(page, "platform-kubernetes")
        finally:
            gateway.stop()
