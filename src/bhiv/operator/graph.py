"""Dependency analysis across the modules of one namespace (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    depends_on: tuple[str, ...]
    ready: bool


@dataclass(frozen=True)
class DependencyState:
    satisfied: bool
    reason: str  # DependenciesReady, WaitingForDependencies, DependencyNotFound, DependencyCycle
    message: str
    waiting_for: tuple[str, ...]


def cycles(nodes: Mapping[str, Node]) -> dict[str, tuple[str, ...]]:
    """Every module on a dependency cycle, mapped to the members of its cycle.

    Tarjan's strongly connected components: a component of more than one
    module is a cycle, and all its members report it, not just the one whose
    edit closed the loop.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: dict[str, tuple[str, ...]] = {}
    counter = 0

    def visit(start: str) -> None:
        # Iterative, so a long chain of modules cannot hit the recursion limit.
        nonlocal counter
        work = [(start, iter(nodes[start].depends_on))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            name, edges = work[-1]
            advanced = False
            for dep in edges:
                if dep not in nodes:
                    continue
                if dep not in index:
                    index[dep] = low[dep] = counter
                    counter += 1
                    stack.append(dep)
                    on_stack.add(dep)
                    work.append((dep, iter(nodes[dep].depends_on)))
                    advanced = True
                    break
                if dep in on_stack:
                    low[name] = min(low[name], index[dep])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[name])
            if low[name] == index[name]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == name:
                        break
                if len(component) > 1 or name in nodes[name].depends_on:
                    members = tuple(sorted(component))
                    for member in component:
                        found[member] = members

    for name in sorted(nodes):
        if name not in index:
            visit(name)
    return found


def dependency_state(
    name: str, nodes: Mapping[str, Node], cycle_map: Mapping[str, tuple[str, ...]]
) -> DependencyState:
    deps = nodes[name].depends_on
    if name in cycle_map:
        members = cycle_map[name]
        return DependencyState(
            False,
            "DependencyCycle",
            f"dependsOn forms a cycle among {', '.join(members)}; remove one of those dependencies",
            tuple(d for d in deps if d in members),
        )
    missing = tuple(d for d in deps if d not in nodes)
    if missing:
        return DependencyState(
            False,
            "DependencyNotFound",
            f"no BhivModule named {', '.join(missing)} in this namespace",
            missing,
        )
    waiting = tuple(d for d in deps if not nodes[d].ready)
    if waiting:
        return DependencyState(
            False,
            "WaitingForDependencies",
            f"waiting for {', '.join(waiting)} to be Ready",
            waiting,
        )
    if not deps:
        return DependencyState(True, "NoDependencies", "the module depends on nothing", ())
    return DependencyState(True, "DependenciesReady", f"{', '.join(deps)} Ready", ())


def _closure(start: str, edges: Mapping[str, Iterable[str]]) -> frozenset[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        name = todo.pop()
        if name == start or name in seen:
            continue
        seen.add(name)
        todo.extend(edges.get(name, ()))
    return frozenset(seen)


@dataclass(frozen=True)
class Reach:
    """Who may talk to whom inside a namespace, from dependsOn: a module calls what it
    depends on (directly or through others), so it is called by its dependents."""

    dependents: frozenset[str]
    dependencies: frozenset[str]


def _edges(nodes: Mapping[str, Node]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """dependsOn edges between existing modules, both ways: (forward, backward)."""
    forward = {name: [d for d in node.depends_on if d in nodes] for name, node in nodes.items()}
    backward: dict[str, list[str]] = {name: [] for name in nodes}
    for name, deps in forward.items():
        for dep in deps:
            backward[dep].append(name)
    return forward, backward


def reach(nodes: Mapping[str, Node]) -> dict[str, Reach]:
    """Every module's transitive dependents and dependencies (existing modules only)."""
    forward, backward = _edges(nodes)
    return {name: Reach(_closure(name, backward), _closure(name, forward)) for name in nodes}


def reach_of(name: str, nodes: Mapping[str, Node]) -> Reach:
    """One module's reach: what a reconcile needs, without every other module's."""
    forward, backward = _edges(nodes)
    return Reach(_closure(name, backward), _closure(name, forward))
