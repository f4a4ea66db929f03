"""``bhiv wait-modules``: wait until BhivModules are Ready, or fail naming the stuck ones.

The Helm chart's post-install/post-upgrade hook Jobs run it, one Job per startup
stage, so a release fails (instead of reporting success) when a stage never comes
up. A module counts as Ready when its ``Ready`` condition is ``True`` *for its
current spec*: the condition's ``observedGeneration`` (when present) and
``status.observedGeneration`` must have caught up with ``metadata.generation``,
so a stale ``Ready`` left over from before an upgrade does not count.

It lists the modules, then watches them (relisting on ``410 Gone`` or a dropped
watch) until all are Ready or the timeout passes. It needs ``get``, ``list`` and
``watch`` on ``bhivmodules.bhiv.io`` in the namespace. Configuration: in-cluster
first, then ``--kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``.

Exit codes: 0 all Ready; 1 timed out (the message names every module still not
Ready, with its Ready reason and message and what it waits for); 2 usage or
configuration error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

GROUP, VERSION, PLURAL = "bhiv.io", "v1alpha1", "bhivmodules"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_CHUNK_SECONDS = 30

err = Console(stderr=True, highlight=False, soft_wrap=True)

# The options every command on BhivModules takes.
NamespaceOption = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace (default: the pod's own, else 'default')."),
]
KubeconfigOption = Annotated[
    str | None, typer.Option(help="Kubeconfig (default: in-cluster, then $KUBECONFIG).")
]


@dataclass(frozen=True)
class ModuleState:
    name: str
    ready: bool
    reason: str
    message: str
    waiting_for: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.name}: {self.reason}"
        if self.message:
            text += f" ({self.message})"
        if self.waiting_for:
            text += f"; waiting for {', '.join(self.waiting_for)}"
        return text


def module_state(body: dict[str, Any]) -> ModuleState:
    """Whether one BhivModule is Ready for its current spec, and if not, why."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    name = meta.get("name", "?")
    generation = int(meta.get("generation") or 0)
    waiting = tuple(status.get("waitingFor") or ())
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    if ready is None:
        return ModuleState(
            name, False, "NoStatus", "the operator has not reported on it yet", waiting
        )
    observed = [
        g
        for g in (ready.get("observedGeneration"), status.get("observedGeneration"))
        if g is not None
    ]
    if any(int(g) < generation for g in observed):
        return ModuleState(
            name,
            False,
            "Outdated",
            f"status describes generation {min(observed)}, spec is at {generation}",
            waiting,
        )
    return ModuleState(
        name,
        ready.get("status") == "True",
        ready.get("reason") or ready.get("status", "Unknown"),
        ready.get("message") or "",
        waiting,
    )


def missing(name: str) -> ModuleState:
    return ModuleState(name, False, "NotFound", "no BhivModule by this name in the namespace")


def _namespace(given: str | None) -> str:
    if given:
        return given
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def _load_config(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.CustomObjectsApi()


def wait_for_modules(
    api: Any,
    namespace: str,
    names: list[str],
    *,
    timeout: float,
    label_selector: str | None = None,
    say: Any = print,
) -> list[ModuleState]:
    """Block until every module is Ready; return the ones not Ready at the timeout ([] on success).

    With ``names`` empty, every module of the namespace (matching ``label_selector``) is awaited.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    states: dict[str, ModuleState] = {name: missing(name) for name in names}
    reported: dict[str, str] = {}

    def pending() -> list[ModuleState]:
        return [s for s in states.values() if not s.ready]

    def report() -> None:
        for state in states.values():
            line = "Ready" if state.ready else state.describe()
            if reported.get(state.name) != line:
                reported[state.name] = line
                say(f"{state.name}: Ready" if state.ready else f"waiting: {line}")

    def take(body: dict[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        if names and name not in states:
            return
        states[name] = missing(name) if deleted else module_state(body)

    while True:
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        try:
            listing = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                raise
            listing = None  # transient: retry below until the deadline
        if listing is not None:
            if not names:
                states = {}
            seen = set()
            for item in listing.get("items") or ():
                take(item)
                seen.add(item["metadata"]["name"])
            for name in names:
                if name not in seen:
                    states[name] = missing(name)
            resource_version = (listing.get("metadata") or {}).get("resourceVersion")
            report()
            if not pending() and (names or states):
                return []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return pending() or [ModuleState("(none)", False, "NotFound", "no BhivModule matched")]
        if listing is None:
            time.sleep(min(1.0, remaining))
            continue
        # Watch from the list's version until something changes the verdict.
        stream = watch.Watch()
        try:
            for event in stream.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                resource_version=resource_version,
                timeout_seconds=max(1, int(min(remaining, WATCH_CHUNK_SECONDS))),
                allow_watch_bookmarks=True,
                **kwargs,
            ):
                kind, body = event["type"], event["object"]
                if kind == "ERROR":
                    break  # e.g. 410 Gone: relist
                if kind == "BOOKMARK":
                    continue
                take(body, deleted=kind == "DELETED")
                report()
                if not pending() and (names or states):
                    return []
                if time.monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status in (401, 403):
                raise
        except Exception:  # noqa: BLE001 - a dropped connection: relist and go on
            time.sleep(0.5)
        finally:
            stream.stop()


def wait_modules(
    modules: Annotated[
        list[str] | None,
        typer.Argument(
            help="BhivModule names; none: every module of the namespace.", show_default=False
        ),
    ] = None,
    namespace: NamespaceOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before failing.", min=0)] = 300,
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", help="Label selector, when no names are given."),
    ] = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Wait until the named BhivModules are Ready; exit 1 after --timeout naming the stuck ones."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    ns = _namespace(namespace)
    names = list(dict.fromkeys(modules or ()))
    what = (
        ", ".join(names)
        if names
        else f"every BhivModule{f' matching {selector}' if selector else ''}"
    )
    try:
        api = _load_config(kubeconfig or os.environ.get("KUBECONFIG"))
    except ConfigException as exc:
        err.print(f"error: no Kubernetes configuration: {exc}")
        raise typer.Exit(2) from None
    err.print(f"waiting up to {timeout:g}s for {what} in namespace {ns} to be Ready")
    started = time.monotonic()
    try:
        stuck = wait_for_modules(
            api, ns, names, timeout=timeout, label_selector=selector, say=err.print
        )
    except ApiException as exc:
        err.print(
            f"error: the API server refused: {exc.status} {exc.reason}: {(exc.body or '')[:300]}"
        )
        raise typer.Exit(2) from None
    if stuck:
        err.print(
            f"error: timed out after {timeout:g}s; not Ready: "
            + "; ".join(state.describe() for state in stuck)
        )
        raise typer.Exit(1)
    err.print(f"all Ready after {time.monotonic() - started:.1f}s: {what}")
