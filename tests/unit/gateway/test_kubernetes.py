"""BhivModule watch events on plain dicts: what the gateway routes after each."""

from __future__ import annotations

from typing import Any

from bhiv.gateway.kubernetes import ModuleIndex, serving


def module(
    name: str,
    service: str,
    url: str | None = None,
    ready: str | None = "True",
    rv: str = "1",
    **spec: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if url:
        status["url"] = url
    if ready is not None:
        status["conditions"] = [
            {"type": "DependenciesReady", "status": "True"},
            {"type": "Ready", "status": ready, "reason": "Test"},
        ]
    return {
        "apiVersion": "bhiv.io/v1alpha1",
        "kind": "BhivModule",
        "metadata": {"name": name, "namespace": "bhiv", "resourceVersion": rv},
        "spec": {"service": service, **spec},
        "status": status,
    }


def routes(index: ModuleIndex) -> dict[str, tuple[str, tuple[str, ...], dict[str, bool]]]:
    return {s.name: (s.prefix, s.urls, dict(s.ready)) for s in index.services()}


def test_list_then_events_change_the_routes() -> None:
    index = ModuleIndex()
    index.reset([module("logistics", "logistics", "http://logistics.bhiv.svc:8001")], "10")
    assert routes(index) == {
        "logistics": (
            "/api/logistics",
            ("http://logistics.bhiv.svc:8001",),
            {"http://logistics.bhiv.svc:8001": True},
        )
    }
    assert index.resource_version == "10"

    assert index.apply("ADDED", module("crm", "crm", "http://crm.bhiv.svc:8002/", rv="11"))
    assert routes(index)["crm"] == (
        "/api/crm",
        ("http://crm.bhiv.svc:8002",),
        {"http://crm.bhiv.svc:8002": True},
    )
    assert index.resource_version == "11"

    # Not Ready any more: still routed (503, not 404), out of rotation.
    assert index.apply(
        "MODIFIED", module("crm", "crm", "http://crm.bhiv.svc:8002", ready="False", rv="12")
    )
    assert routes(index)["crm"][2] == {"http://crm.bhiv.svc:8002": False}

    assert index.apply("DELETED", module("crm", "crm", "http://crm.bhiv.svc:8002", rv="13"))
    assert set(routes(index)) == {"logistics"}


def test_changes_that_do_not_affect_routing_are_ignored() -> None:
    index = ModuleIndex()
    index.reset([module("logistics", "logistics", "http://l:8001", replicas=2)], "1")
    assert not index.apply(
        "MODIFIED", module("logistics", "logistics", "http://l:8001", replicas=5, rv="2")
    )
    assert not index.apply("BOOKMARK", {"metadata": {"resourceVersion": "3"}})
    assert index.resource_version == "3"
    assert not index.apply("ERROR", {"metadata": {"name": "x"}})


def test_modules_without_url_gateway_and_unknown_services() -> None:
    index = ModuleIndex()
    index.reset(
        [
            module("pending", "logistics", url=None, ready=None),
            module("edge", "gateway", "http://gateway:8000"),
            module("mystery", "billing", "http://billing:9000"),
            module("bad-url", "crm", "not a url"),
            {"metadata": {}},  # malformed: no name
        ],
        "5",
    )
    # A service with no URL yet is known (its routes answer 503) but has no instance.
    assert routes(index) == {"logistics": ("/api/logistics", (), {}), "crm": ("/api/crm", (), {})}


def test_several_modules_of_one_service_are_its_instances() -> None:
    index = ModuleIndex()
    index.reset(
        [
            module("logistics-blue", "logistics", "http://blue:8001"),
            module("logistics-green", "logistics", "http://green:8001", ready="False"),
        ],
        "1",
    )
    prefix, urls, ready = routes(index)["logistics"]
    assert urls == ("http://blue:8001", "http://green:8001")
    assert ready == {"http://blue:8001": True, "http://green:8001": False}


def test_serving_follows_available_then_ready() -> None:
    assert serving({}) is None
    assert serving({"conditions": [{"type": "Ready", "status": "Unknown"}]}) is False
    assert serving({"conditions": [{"type": "Ready", "status": "True"}]}) is True
    # A rollout: not Ready (not every pod runs the new spec) but Available (enough
    # pods serve). Taking it out of rotation would fail every request of the rollout.
    rolling = [
        {"type": "Ready", "status": "False", "reason": "RollingOut"},
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
    ]
    assert serving({"conditions": rolling}) is True
    down = [
        {"type": "Ready", "status": "False", "reason": "RollingOut"},
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
    ]
    assert serving({"conditions": down}) is False


def test_serving_while_scaling_out() -> None:
    # 1 → 3 replicas with maxUnavailable 0: the Deployment is not Available until
    # the new pods are ready, but the pod it had still serves (the Service routes to
    # ready pods only); taking the module out of rotation failed every request.
    scaling = [
        {"type": "Ready", "status": "False", "reason": "Scaling"},
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
    ]
    assert serving({"conditions": scaling, "readyReplicas": 1}) is True
    assert serving({"conditions": scaling, "readyReplicas": 0}) is False


def test_module_views_show_status_and_dependencies_but_no_configuration() -> None:
    index = ModuleIndex()
    secret_ref = {"secretKeyRef": {"name": "bhiv-shared-secrets", "key": "BHIV_JWT_SECRET"}}
    crm = module(
        "crm",
        "crm",
        "http://crm:8002",
        ready="False",
        image="bhiv-core:0.1.0",
        replicas=2,
        dependsOn=["llm-query"],
        env=[{"name": "BHIV_JWT_SECRET", "valueFrom": secret_ref}],
        database={"secretRef": {"name": "crm-db", "key": "url"}},
    )
    crm["status"].update(readyReplicas=0, replicasReady="0/2", waitingFor=["llm-query"])
    index.reset([crm, module("gateway", "gateway", dependsOn=["crm"])], "1")

    view, gateway = index.module_views()  # by name
    assert gateway["name"] == "gateway" and gateway["dependsOn"] == ["crm"]
    assert view == {
        "name": "crm",
        "service": "crm",
        "image": "bhiv-core:0.1.0",
        "replicas": 2,
        "paused": False,
        "dependsOn": ["llm-query"],
        "readyReplicas": 0,
        "replicasReady": "0/2",
        "waitingFor": ["llm-query"],
        "url": "http://crm:8002",
        "conditions": [
            {
                "type": "DependenciesReady",
                "status": "True",
                "reason": None,
                "message": None,
                "lastTransitionTime": None,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "Test",
                "message": None,
                "lastTransitionTime": None,
            },
        ],
    }
    assert "secret" not in repr(index.module_views()).lower()


def test_watcher_publishes_the_list_then_changes_and_stops_mid_watch() -> None:
    """The watcher as the gateway runs it: a task on the loop, fed by a scripted API server."""
    import asyncio
    import json

    import httpx2
    from lightkube import AsyncClient

    from bhiv.gateway.kubernetes import BhivModuleWatcher
    from tests.unit.test_kube import CONFIG

    released = asyncio.Event()

    async def hang() -> Any:
        await released.wait()  # never set: the watch stays open until stop()
        yield b""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "watch" not in request.url.params:
            items = [module("crm-a", "crm", "http://crm-a:8000", rv="3")]
            body = {"metadata": {"resourceVersion": "3"}, "items": items}
            return httpx2.Response(200, json=body)
        if request.url.params["resourceVersion"] == "3":
            event = {"type": "ADDED", "object": module("crm-b", "crm", "http://crm-b:8000", rv="4")}
            return httpx2.Response(200, content=(json.dumps(event) + "\n").encode())
        return httpx2.Response(200, content=hang())

    async def main() -> list[list[str]]:
        published: list[list[str]] = []
        api = AsyncClient(CONFIG, transport=httpx2.MockTransport(handler))
        watcher = BhivModuleWatcher("bhiv", lambda s: published.append(list(s[0].urls)), api=api)
        watcher.start()
        for _ in range(200):
            if len(published) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(watcher.stop(), 2)
        return published

    assert asyncio.run(main()) == [
        ["http://crm-a:8000"],
        ["http://crm-a:8000", "http://crm-b:8000"],
    ]
