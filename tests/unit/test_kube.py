"""bhiv.kube's list-watch loop against a scripted API server (an httpx2 MockTransport).

The real API server is the cluster tier's (tests/cluster); here each test scripts the
answers to list and watch requests and checks what the loop asks next and yields.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient, KubeConfig

from bhiv import kube

pytestmark = pytest.mark.unit

PATH = f"/apis/{kube.GROUP}/{kube.VERSION}/namespaces/ns/{kube.PLURAL}"


CONFIG = KubeConfig.from_dict(
    {
        "clusters": [{"name": "test", "cluster": {"server": "http://api.test"}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
)


def module(name: str, rv: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
        "kind": kube.KIND,
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
        "spec": {"service": "crm"},
    }


def listing(rv: str, *items: dict[str, Any]) -> httpx2.Response:
    return httpx2.Response(
        200, json={"kind": "BhivModuleList", "metadata": {"resourceVersion": rv}, "items": items}
    )


def stream(*events: dict[str, Any]) -> httpx2.Response:
    return httpx2.Response(200, content="".join(json.dumps(e) + "\n" for e in events).encode())


Script = list[Callable[[httpx2.Request], httpx2.Response]]


def run(script: Script, take: int, **options: Any) -> tuple[list[Any], list[httpx2.Request]]:
    """Follow list_watch for ``take`` updates; the requests it made, in order."""
    requests: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        assert request.url.path == PATH
        return script.pop(0)(request)

    async def main() -> list[Any]:
        api = AsyncClient(CONFIG, transport=httpx2.MockTransport(handler))
        updates = []
        try:
            async for update in kube.list_watch(api, kube.BhivModule, "ns", **options):
                updates.append(update)
                if len(updates) == take:
                    break
        finally:
            await api.close()
        return updates

    return asyncio.run(main()), requests


def recording(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits list_watch asks for, recorded instead of waited out."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(kube, "_sleep", sleep)
    return slept


def params(request: httpx2.Request) -> dict[str, str]:
    return dict(request.url.params)


def test_lists_then_watches_from_the_lists_version_with_bookmarks() -> None:
    updates, requests = run(
        [
            lambda _: listing("10", module("a", "9")),
            lambda _: stream(
                {"type": "ADDED", "object": module("b", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
            ),
            lambda _: stream({"type": "DELETED", "object": module("a", "13")}),
        ],
        take=4,
        labels="app=crm",
    )
    assert updates[0] == kube.Listing([module("a", "9")], "10")
    assert updates[1] == kube.Change("ADDED", module("b", "11"))
    assert updates[2].type == "BOOKMARK"
    assert updates[3] == kube.Change("DELETED", module("a", "13"))
    first, watch, resumed = (params(r) for r in requests)
    assert first == {"labelSelector": "app=crm"}
    assert watch["watch"] == "true"
    assert watch["resourceVersion"] == "10"
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["timeoutSeconds"] == str(kube.WATCH_SECONDS)
    assert watch["labelSelector"] == "app=crm"
    # The server ended the first watch; the next resumes from the bookmark's version.
    assert resumed["resourceVersion"] == "12"


def test_410_gone_lists_again_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = recording(monkeypatch)
    gone = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}
    updates, requests = run(
        [
            lambda _: listing("10"),
            lambda _: stream({"type": "ERROR", "object": gone}),
            lambda _: listing("20", module("a", "19")),
        ],
        take=2,
    )
    assert updates == [kube.Listing([], "10"), kube.Listing([module("a", "19")], "20")]
    assert "watch" not in params(requests[2])
    assert slept == []


def test_errors_back_off_exponentially_up_to_30s(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = recording(monkeypatch)

    def unavailable(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503, json={"kind": "Status", "code": 503, "message": "busy"})

    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    updates, _ = run([unavailable, refused] * 4 + [lambda _: listing("5")], take=1)
    assert updates == [kube.Listing([], "5")]
    assert slept == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_successful_list_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = recording(monkeypatch)

    def broken(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500, json={"kind": "Status", "code": 500})

    run([broken, broken, lambda _: listing("1"), broken, lambda _: listing("2")], take=2)
    assert slept == [1, 2, 1]


def test_fatal_refusals_are_raised() -> None:
    def forbidden(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403, json={"kind": "Status", "code": 403, "reason": "Forbidden"})

    with pytest.raises(kube.ApiError) as raised:
        run([forbidden], take=1, fatal=(401, 403))
    assert kube.status_code(raised.value) == 403


def test_next_backoff_doubles_to_the_cap() -> None:
    waits = [1.0]
    for _ in range(7):
        waits.append(kube.next_backoff(waits[-1]))
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]


def test_explicit_kubeconfig_that_does_not_exist_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(kube.ConfigError):
        kube.load_config(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        ("GET", "/apis/apps/v1/namespaces/ns/deployments/shop", {}, ("get", "deployments")),
        ("GET", "/apis/apps/v1/namespaces/ns/deployments", {}, ("list", "deployments")),
        ("GET", "/apis/apps/v1/deployments", {"watch": "true"}, ("watch", "deployments")),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": "1"}, ("watch", "pods")),
        ("PATCH", f"{PATH}/shop/status", {}, ("patch", "bhivmodules/status")),
        ("PATCH", "/api/v1/namespaces/ns/services/shop", {}, ("patch", "services")),
        ("POST", "/api/v1/namespaces/ns/events", {}, ("create", "events")),
        ("PUT", "/api/v1/namespaces/ns/secrets/s", {}, ("update", "secrets")),
        (
            "DELETE",
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x",
            {},
            ("delete", "poddisruptionbudgets"),
        ),
        ("DELETE", "/api/v1/namespaces/ns/pods", {}, ("deletecollection", "pods")),
        # A namespace itself, and its own subresource.
        ("GET", "/api/v1/namespaces/ns", {}, ("get", "namespaces")),
        ("PUT", "/api/v1/namespaces/ns/finalize", {}, ("update", "namespaces/finalize")),
        ("GET", "/version", {}, ("get", "nonresource")),
        ("GET", "/apis/apps/v1", {}, ("get", "nonresource")),
    ],
)
def test_request_kind_names_verbs_and_resources_as_kubernetes_does(
    method: str, path: str, params: dict[str, str], expected: tuple[str, str]
) -> None:
    assert kube.request_kind(method, path, params) == expected


def test_every_request_of_an_observed_client_is_told_by_verb_and_resource() -> None:
    """Through lightkube's own calls and list_watch's, against a scripted server."""
    seen: list[tuple[str, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("watch") == "true":
            return stream({"type": "ADDED", "object": module("b", "3")})
        if request.method == "DELETE":
            return httpx2.Response(200, json={"kind": "Status", "status": "Success"})
        if request.method == "GET" and request.url.path == PATH:
            return listing("2", module("a", "1"))
        return httpx2.Response(200, json=module("a", "4"))

    async def main() -> None:
        api = AsyncClient(CONFIG, transport=httpx2.MockTransport(handler))
        kube.observe_requests(api, lambda verb, resource: seen.append((verb, resource)))
        try:
            await api.get(kube.BhivModule, "a", namespace="ns")
            await api.patch(kube.BhivModule.Status, "a", {"status": {}}, namespace="ns")
            await api.delete(kube.BhivModule, "a", namespace="ns")
            async for update in kube.list_watch(api, kube.BhivModule, "ns"):
                if isinstance(update, kube.Change):
                    break
        finally:
            await api.close()

    asyncio.run(main())
    assert seen == [
        ("get", "bhivmodules"),
        ("patch", "bhivmodules/status"),
        ("delete", "bhivmodules"),
        ("list", "bhivmodules"),
        ("watch", "bhivmodules"),
    ]
