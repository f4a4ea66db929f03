"""``bhiv modules``: a namespace's BhivModules as their dependency tree, with each one's state.

Each module stands under the modules it depends on (startup order top to bottom);
one that depends on several stands under each, spelled out once and marked
``(above)`` after that. A dependency that does not exist is shown as ``not found``;
a cycle is cut where it closes. Needs ``list`` on ``bhivmodules.bhiv.io``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import typer
from rich.console import Console

from bhiv.cli.wait import (
    KubeconfigOption,
    NamespaceOption,
    _client,
    _namespace,
    closing,
    module_state,
    refusal,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _line(body: dict[str, Any]) -> str:
    state = module_state(body)
    spec, status = body.get("spec") or {}, body.get("status") or {}
    text = f"{state.name} [{spec.get('service', '?')}]  "
    text += "Ready" if state.ready else f"{state.reason}"
    text += f"  {status.get('replicasReady') or '0/0'}"
    if not state.ready and state.message:
        text += f"  {state.message}"
    if state.waiting_for:
        text += f"  (waiting for {', '.join(state.waiting_for)})"
    return text


def dependency_tree(bodies: Iterable[dict[str, Any]]) -> list[str]:
    """The lines of the tree: roots are the modules that depend on nothing here."""
    modules = {b["metadata"]["name"]: b for b in bodies}
    deps = {name: list((b.get("spec") or {}).get("dependsOn") or ()) for name, b in modules.items()}
    dependents: dict[str, list[str]] = {}
    for name in sorted(modules):
        for dep in deps[name]:
            dependents.setdefault(dep, []).append(name)
    missing = sorted({d for ds in deps.values() for d in ds if d not in modules})
    # A module with a missing dependency stands under it; one in a cycle is reached below.
    roots = [n for n in sorted(modules) if not deps[n]]
    lines: list[str] = []
    shown: set[str] = set()

    def walk(name: str, prefix: str, last: bool, path: tuple[str, ...], top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        if name in path:
            lines.append(f"{prefix}{branch}{name}  (cycle)")
            return
        if name not in modules:
            lines.append(f"{prefix}{branch}{name}  not found")
        elif name in shown:
            lines.append(f"{prefix}{branch}{name}  (above)")
            return
        else:
            lines.append(f"{prefix}{branch}{_line(modules[name])}")
            shown.add(name)
        children = dependents.get(name, [])
        child_prefix = prefix if top else prefix + ("    " if last else "│   ")
        for i, child in enumerate(children):
            walk(child, child_prefix, i == len(children) - 1, (*path, name), False)

    for root in [*missing, *roots]:
        walk(root, "", True, (), True)
    # Modules only reachable through a cycle have no root: list them too.
    while rest := sorted(set(modules) - shown):
        walk(rest[0], "", True, (), True)
    return lines


def modules_command(namespace: NamespaceOption = None, kubeconfig: KubeconfigOption = None) -> None:
    """Print the namespace's BhivModules as a dependency tree with each module's state."""
    from bhiv import kube

    ns = _namespace(namespace)
    try:
        api = _client(kubeconfig)
        items = asyncio.run(closing(api, kube.list_once(api, kube.BhivModule, ns))).items
    except kube.ConfigError as exc:
        err.print(f"error: no Kubernetes configuration: {exc}")
        raise typer.Exit(2) from None
    except kube.ApiError as exc:
        err.print(f"error: the API server refused: {refusal(exc)}")
        raise typer.Exit(2) from None
    ready = sum(module_state(b).ready for b in items)
    out.print(f"namespace {ns}: {len(items)} modules, {ready} Ready", markup=False)
    for line in dependency_tree(items):
        out.print(line, markup=False)
