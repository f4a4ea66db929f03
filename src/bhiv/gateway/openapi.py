"""One OpenAPI document for the live platform.

Each routed service with an available instance contributes its own
``/openapi.json``, rewritten to how a client sees it through the gateway:
paths under the service's prefix, operation IDs and tags prefixed with the
service's name, component schemas renamed ``<service>.<Schema>`` (every service
has a ``ProblemDetail``; they must not collide) with every ``$ref`` rewritten.
The result is cached until the registry changes (a service added, removed,
down or back) or it is older than the configured maximum age.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

import httpx

from bhiv.core.auth import PUBLIC_OPERATION
from bhiv.gateway.registry import PublicOperation, Registry, Upstream

log = logging.getLogger("bhiv.gateway.openapi")
SCHEMA_REF = "#/components/schemas/"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def merge(base: dict[str, Any], services: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The gateway's own document plus each service's, as seen through the gateway."""
    out = copy.deepcopy(base)
    paths: dict[str, Any] = out.setdefault("paths", {})
    components = out.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    out["security"] = [{"bearer": []}, {"apiKey": []}]
    tags: list[dict[str, Any]] = list(out.get("tags", []))
    included: dict[str, Any] = {}
    for name, (prefix, doc) in sorted(services.items()):
        renames = {s: f"{name}.{s}" for s in (doc.get("components") or {}).get("schemas", {})}
        doc = _rewrite_refs(doc, renames)
        for path, item in (doc.get("paths") or {}).items():
            for method, op in item.items():
                if method in HTTP_METHODS and isinstance(op, dict):
                    if "operationId" in op:
                        op["operationId"] = f"{name}.{op['operationId']}"
                    op["tags"] = [f"{name}: {t}" for t in op.get("tags", [])] or [name]
            paths[prefix + path] = item
        for schema, body in ((doc.get("components") or {}).get("schemas") or {}).items():
            schemas[f"{name}.{schema}"] = body
        for tag in doc.get("tags", []):
            if isinstance(tag, dict) and "name" in tag:
                tags.append({**tag, "name": f"{name}: {tag['name']}"})
        info = doc.get("info") or {}
        included[name] = {
            "prefix": prefix,
            "title": info.get("title"),
            "version": info.get("version"),
        }
    out["tags"] = tags
    out["x-bhiv-services"] = included
    return out


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(SCHEMA_REF):
                target = value[len(SCHEMA_REF) :]
                out[key] = SCHEMA_REF + renames.get(target, target)
            else:
                out[key] = _rewrite_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


class OpenApiAggregator:
    def __init__(self, registry: Registry, max_age: float, timeout: float = 3.0) -> None:
        self._registry = registry
        self._max_age = max_age
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False)
        self._lock = asyncio.Lock()
        self._cached: dict[str, Any] | None = None
        self._key: tuple[int, int] | None = None
        self._built_at = 0.0

    async def document(self, base: dict[str, Any]) -> dict[str, Any]:
        key = (self._registry.generation, id(base))
        if self._fresh(key):
            return self._cached  # type: ignore[return-value]
        async with self._lock:
            if self._fresh(key):
                return self._cached  # type: ignore[return-value]
            upstreams = list(self._registry.upstreams.values())
            fetched = await asyncio.gather(*(self.fetch(u) for u in upstreams))
            docs = {
                u.name: (u.prefix, doc)
                for u, doc in zip(upstreams, fetched, strict=True)
                if doc is not None
            }
            document = merge(base, docs)
            document["x-bhiv-unavailable"] = sorted(
                u.name for u, doc in zip(upstreams, fetched, strict=True) if doc is None
            )
            self._cached, self._key, self._built_at = document, key, time.monotonic()
            return document

    def _fresh(self, key: tuple[int, int]) -> bool:
        return (
            self._cached is not None
            and self._key == key
            and time.monotonic() - self._built_at < self._max_age
        )

    async def fetch(self, upstream: Upstream) -> dict[str, Any] | None:
        instance = upstream.pick()
        if instance is None:
            return None
        try:
            response = await self._http.get(instance.url + "/openapi.json")
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "no OpenAPI document from %s (%s): %s",
                upstream.name,
                instance.url,
                type(exc).__name__,
            )
            return None
        return doc if isinstance(doc, dict) else None

    async def learn_public_operations(self, max_age: float) -> None:
        """Refresh each service's public operations from its own OpenAPI document when older than ``max_age``."""
        now = time.monotonic()
        stale = [
            u
            for u in self._registry.upstreams.values()
            if u.public_learned_at is None or now - u.public_learned_at >= max_age
        ]
        for upstream, doc in zip(
            stale, await asyncio.gather(*(self.fetch(u) for u in stale)), strict=True
        ):
            if doc is None:
                continue  # no instance answered: keep what was known, try again next time
            operations = public_operations(doc)
            if operations != upstream.public_operations:
                log.info(
                    "%s declares public: %s",
                    upstream.name,
                    ", ".join(f"{op.method} {op.template}" for op in operations) or "nothing",
                )
            upstream.public_operations = operations
            upstream.public_learned_at = now

    async def aclose(self) -> None:
        await self._http.aclose()


def public_operations(doc: dict[str, Any]) -> tuple[PublicOperation, ...]:
    """The operations a service's OpenAPI document marks ``x-bhiv-public: true``."""
    found = []
    paths = doc.get("paths")
    for path, item in (paths if isinstance(paths, dict) else {}).items():
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            continue
        for method, op in item.items():
            if method in HTTP_METHODS and isinstance(op, dict) and op.get(PUBLIC_OPERATION) is True:
                found.append(PublicOperation.of(method, path))
    return tuple(found)
