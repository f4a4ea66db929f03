"""``bhiv wait-modules``: wait until BhivModules are Ready, or fail naming the stuck ones.

The Helm chart's post-install/post-upgrade hook Jobs run it, one Job per startup
stage, so a release fails (instead of reporting success) when a stage never comes
up. A module counts as Ready when its ``Ready`` condition is ``True`` *for its
current spec*: the condition's ``observedGeneration`` (when present) and
``status.observedGeneration`` must have caught up with ``metadata.generation``,
so a stale ``Ready`` left over from before an upgrade does not count.

It lists the modules, then watches them (:func:`bhiv.kube.list_watch`: relisting
on ``410 Gone`` or a dropped watch) until all are Ready or the timeout passes. It
needs ``get``, ``list`` and ``watch`` on ``bhivmodules.bhiv.io`` in the namespace.
Configuration: ``--kubeconfig`` / ``$KUBECONFIG`` when given, else in-cluster, else
``~/.kube/config``.

Exit codes: 0 all Ready; 1 timed out (the message names every module still not
Ready, with its Ready reason and message and what it waits for); 2 usage or
configuration error.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from lightkube import AsyncClient

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


def refusal(exc: Any) -> str:
    """``403 Forbidden: <the server's message>`` for a lightkube ApiError."""
    status = exc.status
    return f"{status.code} {status.reason}: {(status.message or '')[:300]}"


def missing(name: str) -> ModuleState:
    return ModuleState(name, False, "NotFound", "no BhivModule by this name in the namespace")


def _namespace(given: str | None) -> str:
    from bhiv.kube import default_namespace

    return given or default_namespace()


def _client(kubeconfig: str | None) -> AsyncClient:
    """The API client; ``--kubeconfig`` or ``$KUBECONFIG`` wins over in-cluster."""
    from bhiv import kube

    return kube.client(kubeconfig=kubeconfig or os.environ.get("KUBECONFIG"))


T = TypeVar("T")


async def closing(api: AsyncClient, work: Awaitable[T]) -> T:
    """Await ``work``, then close the client it uses (its connections belong to this loop)."""
    try:
        return await work
    finally:
        await api.close()


async def wait_for_modules(
    api: AsyncClient,
    namespace: str,
    names: list[str],
    *,
    timeout: float,  # noqa: ASYNC109 - at the deadline it answers who is still not Ready
    label_selector: str | None = None,
    say: Callable[[str], Any] = print,
) -> list[ModuleState]:
    """Wait until every module is Ready; return the ones not Ready at the timeout ([] on success).

    With ``names`` empty, every module of the namespace (matching ``label_selector``) is
    awaited. An API refusal of 401, 403 or 404 is raised; other failures are retried.
    """
    from bhiv import kube

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

    updates = kube.list_watch(
        api, kube.BhivModule, namespace, labels=label_selector, fatal=(401, 403, 404)
    )
    try:
        async with asyncio.timeout(timeout):
            async for update in updates:
                if isinstance(update, kube.Listing):
                    states = {name: missing(name) for name in names}
                    for item in update.items:
                        take(item)
                elif update.type == "BOOKMARK":
                    continue
                else:
                    take(update.object, deleted=update.type == "DELETED")
                report()
                if not pending() and (names or states):
                    return []
    except TimeoutError:
        pass
    finally:
        await updates.aclose()
    return pending() or [ModuleState("(none)", False, "NotFound", "no BhivModule matched")]


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
    from bhiv.kube import ApiError, ConfigError

    ns = _namespace(namespace)
    names = list(dict.fromkeys(modules or ()))
    what = (
        ", ".join(names)
        if names
        else f"every BhivModule{f' matching {selector}' if selector else ''}"
    )
    try:
        api = _client(kubeconfig)
    except ConfigError as exc:
        err.print(f"error: no Kubernetes configuration: {exc}")
        raise typer.Exit(2) from None
    err.print(f"waiting up to {timeout:g}s for {what} in namespace {ns} to be Ready")
    started = time.monotonic()
    try:
        stuck = asyncio.run(
            wait_for_modules(
                api, ns, names, timeout=timeout, label_selector=selector, say=err.print
            )
        )
    except ApiError as exc:
        err.print(f"error: the API server refused: {refusal(exc)}")
        raise typer.Exit(2) from None
    if stuck:
        err.print(
            f"error: timed out after {timeout:g}s; not Ready: "
            + "; ".join(state.describe() for state in stuck)
        )
        raise typer.Exit(1)
    err.print(f"all Ready after {time.monotonic() - started:.1f}s: {what}")
