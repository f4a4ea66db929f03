"""The live routing table: services, their instances, and each instance's health.

Discovery (local configuration or the Kubernetes watcher) hands the registry the
full list of services whenever it changes; the registry keeps what it already
knew about instances that stay (health, counters), so a routine update never
forgets that an instance is down. Health has two inputs, as in Envoy:

- *active*: the health checker's periodic ``/health/ready`` probes;
- *passive* (outlier detection): consecutive instance faults seen while
  proxying (timeouts, resets, 502/503/504 that are not the service's own
  problem answers) eject an instance for a while; never the last available
  one for faults it answered (see ``bhiv.gateway.forwarder``).

A refused connection is both: nobody listens, so the instance is marked down at
once and the next successful probe brings it back.
"""

from __future__ import annotations

import enum
import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bhiv.gateway.settings import RoutePolicy


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # not probed yet: routed to, optimistically
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class DiscoveredService:
    """What discovery knows about a service: where it is routed and where it runs."""

    name: str
    prefix: str
    urls: tuple[str, ...]
    capabilities: tuple[str, ...] = ()
    # The platform's own opinion of an instance, by URL (Kubernetes: the
    # BhivModule's Ready condition); a URL not listed has none.
    ready: Mapping[str, bool] = field(default_factory=dict)


@dataclass
class Instance:
    url: str
    health: Health = Health.UNKNOWN
    last_check: float | None = None  # wall-clock time of the last probe
    last_error: str | None = None
    check_failures: int = 0  # consecutive failed probes
    gateway_failures: int = 0  # consecutive failures while proxying
    ejected_until: float = 0.0  # monotonic
    outstanding: int = 0
    # The Kubernetes Ready condition, when discovery reports one: False keeps
    # the instance out of rotation whatever the probes say.
    platform_ready: bool | None = None

    def available(self, now: float) -> bool:
        return (
            self.health is not Health.UNHEALTHY
            and self.ejected_until <= now
            and self.platform_ready is not False
        )

    def describe(self, now: float) -> dict[str, object]:
        ejected = self.ejected_until > now
        return {
            "url": self.url,
            "health": self.health.value,
            "available": self.available(now),
            "ejected": ejected,
            "ejected_for_seconds": round(self.ejected_until - now, 3) if ejected else 0,
            "last_check": _iso(self.last_check),
            "last_error": self.last_error,
            "outstanding": self.outstanding,
            "platform_ready": self.platform_ready,
        }


@dataclass(frozen=True)
class PublicOperation:
    """An operation the service declares reachable without a credential (``x-bhiv-public`` in its OpenAPI)."""

    method: str
    template: str  # e.g. /webhooks/{source}
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, method: str, template: str) -> PublicOperation:
        # Each {parameter} is exactly one segment; everything else is literal.
        parts = re.split(r"(\{[^/{}]+\})", template)
        regex = "".join(
            "[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts
        )
        return cls(method.upper(), template, re.compile(f"^{regex}$"))

    def matches(self, method: str, path: str) -> bool:
        return (method == self.method or (method == "HEAD" and self.method == "GET")) and bool(
            self.pattern.match(path)
        )


@dataclass
class Upstream:
    """One routed service: its prefix, instances and how to pick among them."""

    name: str
    prefix: str
    policy: RoutePolicy
    instances: list[Instance] = field(default_factory=list)
    capabilities: tuple[str, ...] = ()
    # Learned from the service's OpenAPI (OpenApiAggregator.learn_public_operations);
    # empty until first learned (public_learned_at None): nothing is public on the
    # service's word before then.
    public_operations: tuple[PublicOperation, ...] = ()
    public_learned_at: float | None = None
    _turn: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def declares_public(self, method: str, path: str) -> bool:
        return any(op.matches(method, path) for op in self.public_operations)

    @property
    def route_template(self) -> str:
        return f"{self.prefix}/{{path}}"

    def pick(self, avoid: Iterable[Instance] = ()) -> Instance | None:
        """The instance for the next attempt, or None when none is available.

        Instances in ``avoid`` (already tried by this request) are skipped
        unless nothing else is available: retrying the same instance beats
        giving up.
        """
        now = time.monotonic()
        candidates = [i for i in self.instances if i.available(now)]
        if not candidates:
            return None
        avoided = [i for i in candidates if i not in avoid] if avoid else candidates
        candidates = avoided or candidates
        turn = next(self._turn)
        if self.policy.load_balancer == "least_outstanding":
            # Rotate first so ties are shared instead of always going to the first.
            start = turn % len(candidates)
            rotated = candidates[start:] + candidates[:start]
            return min(rotated, key=lambda i: i.outstanding)
        return candidates[turn % len(candidates)]

    def status(self, now: float) -> str:
        if not self.instances:
            return "down"
        available = sum(1 for i in self.instances if i.available(now))
        if available == len(self.instances):
            return "up"
        return "degraded" if available else "down"


class Registry:
    """Services by name and by prefix, updated by discovery and health checks."""

    def __init__(self, policy_for: Callable[[str], RoutePolicy]) -> None:
        self._policy_for = policy_for
        self.upstreams: dict[str, Upstream] = {}
        self._by_prefix: list[tuple[str, Upstream]] = []
        # Bumped on every change a client could see (membership, availability),
        # so cached views (the aggregated OpenAPI) know when to rebuild.
        self.generation = 0
        self.synced = False

    def update(self, services: Iterable[DiscoveredService]) -> list[Upstream]:
        """Replace the service list; returns the upstreams that went away."""
        fresh: dict[str, Upstream] = {}
        for svc in services:
            old = self.upstreams.get(svc.name)
            known = {i.url: i for i in old.instances} if old else {}
            instances = []
            for url in dict.fromkeys(svc.urls):
                inst = known.get(url) or Instance(url)
                inst.platform_ready = svc.ready.get(url)
                instances.append(inst)
            if old is not None and old.prefix == svc.prefix:
                old.instances = instances
                old.capabilities = svc.capabilities
                fresh[svc.name] = old
            else:
                fresh[svc.name] = Upstream(
                    svc.name, svc.prefix, self._policy_for(svc.name), instances, svc.capabilities
                )
        removed = [u for name, u in self.upstreams.items() if fresh.get(name) is not u]
        self.upstreams = fresh
        # Longest prefix first, so /api/a/b wins over /api/a.
        self._by_prefix = sorted(((u.prefix, u) for u in fresh.values()), key=lambda p: -len(p[0]))
        self.synced = True
        self.generation += 1
        return removed

    def match(self, path: str) -> tuple[Upstream, str] | None:
        """The upstream owning ``path`` and the path below its prefix."""
        for prefix, upstream in self._by_prefix:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if not rest:
                    return upstream, "/"
                if rest[0] == "/":
                    return upstream, rest
        return None

    # -- health inputs -----------------------------------------------------

    def probe_result(
        self, inst: Instance, ok: bool, error: str | None, unhealthy_threshold: int
    ) -> None:
        before = inst.available(time.monotonic())
        inst.last_check = time.time()
        if ok:
            inst.check_failures = 0
            inst.health = Health.HEALTHY
            inst.last_error = None
        else:
            inst.check_failures += 1
            inst.last_error = error
            if inst.check_failures >= unhealthy_threshold or inst.health is Health.UNKNOWN:
                inst.health = Health.UNHEALTHY
        self._changed(inst, before)

    def refused(self, inst: Instance, error: str) -> None:
        """A connection was refused: nobody listens there, so it is down now."""
        before = inst.available(time.monotonic())
        inst.health = Health.UNHEALTHY
        inst.last_error = error
        self._changed(inst, before)

    def gateway_failure(
        self,
        inst: Instance,
        error: str,
        eject_after: int,
        ejection_seconds: float,
        *,
        eject: bool = True,
    ) -> bool:
        """Count a failure seen while proxying; returns True if it ejected the instance.

        With ``eject`` False the failure is counted and remembered, but the
        instance stays in rotation.
        """
        inst.gateway_failures += 1
        inst.last_error = error
        if eject and inst.gateway_failures >= eject_after:
            before = inst.available(time.monotonic())
            inst.gateway_failures = 0
            inst.ejected_until = time.monotonic() + ejection_seconds
            self._changed(inst, before)
            return True
        return False

    def gateway_success(self, inst: Instance) -> None:
        inst.gateway_failures = 0

    def _changed(self, inst: Instance, was_available: bool) -> None:
        if inst.available(time.monotonic()) != was_available:
            self.generation += 1

    def describe(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {
                "name": u.name,
                "prefix": u.prefix,
                "status": u.status(now),
                "capabilities": list(u.capabilities),
                "load_balancer": u.policy.load_balancer,
                "instances": [i.describe(now) for i in u.instances],
            }
            for u in sorted(self.upstreams.values(), key=lambda u: u.name)
        ]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
