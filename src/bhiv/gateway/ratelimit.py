"""Token-bucket rate limits per client IP and per caller, in memory or in Redis.

A bucket holds at most ``burst`` tokens and refills at ``rate`` per second; a
request takes one. In memory, each gateway replica limits on its own; with
Redis, one bucket per key is shared by every replica: a Lua script refills and
takes atomically, on Redis's clock (``TIME``), so replicas with skewed clocks
still agree. If Redis fails, the gateway limits in memory until it answers
again rather than letting everything through or refusing everything.

Answers carry the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
``RateLimit-Policy: "ip";q=<burst>;w=<seconds to refill>`` and
``RateLimit: "ip";r=<tokens left>;t=<seconds until the next token>``; a 429 adds
``Retry-After`` (equal to ``t``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from bhiv.gateway.metrics import GatewayMetrics
from bhiv.gateway.settings import RateSpec

log = logging.getLogger("bhiv.gateway.ratelimit")

# Refill and take atomically. Returns {allowed (0/1), tokens left (string:
# Lua numbers returned to Redis are truncated to integers)}.
REFILL_AND_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""
REDIS_RETRY_SECONDS = 2.0
MEMORY_BUCKETS = 100_000


@dataclass(frozen=True)
class Decision:
    policy: str
    spec: RateSpec
    allowed: bool
    tokens: float

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))

    @property
    def next_token_seconds(self) -> int:
        """Whole seconds until one more token is in the bucket (the draft's ``t``)."""
        if self.tokens >= self.spec.burst:
            return 0
        missing = 1 - (self.tokens - math.floor(self.tokens))
        return max(1 if not self.allowed else 0, math.ceil(missing / self.spec.rate))

    def policy_item(self) -> str:
        window = max(1, math.ceil(self.spec.burst / self.spec.rate))
        return f'"{self.policy}";q={self.spec.burst};w={window}'

    def limit_item(self) -> str:
        return f'"{self.policy}";r={self.remaining};t={self.next_token_seconds}'


def rate_limit_headers(decisions: list[Decision]) -> list[tuple[bytes, bytes]]:
    if not decisions:
        return []
    headers = [
        (b"ratelimit-policy", ", ".join(d.policy_item() for d in decisions).encode()),
        (b"ratelimit", ", ".join(d.limit_item() for d in decisions).encode()),
    ]
    refused = [d for d in decisions if not d.allowed]
    if refused:
        headers.append((b"retry-after", str(max(d.next_token_seconds for d in refused)).encode()))
    return headers


class MemoryBuckets:
    """Buckets in this process, at most ``capacity`` per policy, each forgotten once idle long enough to be full.

    A bucket idle for ``burst / rate`` seconds is full again, the same as no
    bucket, so it expires then (cachetools' TTLCache, renewed on each use).
    Beyond ``capacity`` live buckets the least recently used goes first:
    memory and the cost of a request stay flat however many addresses a
    client sprays (at worst a sprayer frees the buckets of idle clients).
    """

    def __init__(self, capacity: int = MEMORY_BUCKETS) -> None:
        self._capacity = capacity
        self._by_spec: dict[tuple[float, int], TTLCache[str, list[float]]] = {}

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_spec.values())

    def take(self, key: str, spec: RateSpec, cost: int) -> tuple[bool, float]:
        buckets = self._by_spec.get((spec.rate, spec.burst))
        if buckets is None:
            buckets = self._by_spec[(spec.rate, spec.burst)] = TTLCache(
                self._capacity, spec.burst / spec.rate, timer=time.monotonic
            )
        now = time.monotonic()
        bucket = buckets.get(key)
        if bucket is None:
            bucket = [float(spec.burst), now]
        tokens = min(spec.burst, bucket[0] + (now - bucket[1]) * spec.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        # Set again (not only changed) so its expiry and recency are renewed.
        buckets[key] = [tokens, now]
        return allowed, tokens


class RateLimiter:
    def __init__(
        self,
        policies: dict[str, RateSpec | None],
        metrics: GatewayMetrics,
        redis_url: str | None = None,
    ) -> None:
        self.policies = {name: spec for name, spec in policies.items() if spec is not None}
        self._metrics = metrics
        self._memory = MemoryBuckets()
        self._redis: Any = None
        self._script: Any = None
        self._redis_down_until = 0.0
        if redis_url:
            import redis.asyncio as aioredis

            # Short timeouts: a slow Redis must not make every request slow.
            self._redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
            )
            self._script = self._redis.register_script(REFILL_AND_TAKE_LUA)

    @property
    def backend(self) -> str:
        return "redis" if self._redis is not None else "memory"

    def enabled(self, policy: str) -> bool:
        return policy in self.policies

    async def take(self, policy: str, partition: str, cost: int = 1) -> Decision | None:
        spec = self.policies.get(policy)
        if spec is None:
            return None
        # Hashed: the keys hold no IP address or caller name in the clear.
        key = (
            f"bhiv:gateway:ratelimit:{policy}:{hashlib.sha256(partition.encode()).hexdigest()[:32]}"
        )
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                allowed, tokens = await self._script(keys=[key], args=[spec.rate, spec.burst, cost])
                decision = Decision(policy, spec, bool(allowed), float(tokens))
            except Exception as exc:  # redis errors, timeouts, refused connections
                self._metrics.rate_limit_backend_errors.inc()
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                log.warning(
                    "Redis rate limiting failed (%s); limiting in memory for now",
                    type(exc).__name__,
                )
            else:
                self._count(decision)
                return decision
        allowed, tokens = self._memory.take(key, spec, cost)
        decision = Decision(policy, spec, allowed, tokens)
        self._count(decision)
        return decision

    def _count(self, decision: Decision) -> None:
        if not decision.allowed:
            self._metrics.rate_limited.labels(decision.policy).inc()

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
