"""Caching, usage and cost accounting, analytics, rate limits and budgets over real HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from tests.conftest import run_service
from tests.service.llm.helpers import (
    BACKUP,
    PRIMARY,
    admin,
    ask,
    client,
    keyed,
    registry_env,
    sse_events,
    unique,
)
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


@pytest.fixture(scope="module")
def short_ttl(
    backend: str, request: pytest.FixtureRequest, fake_server: FakeOpenAI
) -> Iterator[ServiceProcess]:
    """A service whose cache entries live one second."""
    yield from run_service(
        "llm-query", backend, request, **registry_env(fake_server), BHIV_LLM_CACHE_TTL_SECONDS="1"
    )


class TestCache:
    def test_entries_expire_after_their_ttl(
        self, short_ttl: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(short_ttl)
        prompt = unique()
        assert ask(api, prompt).headers["X-BHIV-Cache"] == "MISS"
        assert ask(api, prompt).headers["X-BHIV-Cache"] == "HIT"
        time.sleep(1.2)
        assert ask(api, prompt).headers["X-BHIV-Cache"] == "MISS"
        assert len(fake.calls_for(PRIMARY)) == 2

    def test_identical_requests_hit_the_cache_per_tenant(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        api = client(llm, tenant=tenant)
        prompt = unique("What is 2+2?")
        first = ask(api, prompt, temperature=0)
        assert first.status_code == 200 and first.headers["X-BHIV-Cache"] == "MISS"
        second = ask(api, prompt, temperature=0)
        assert (
            second.headers["X-BHIV-Cache"] == "HIT" and second.json()["bhiv"]["cache_hit"] is True
        )
        assert second.json()["choices"] == first.json()["choices"]
        assert (
            second.json()["usage"] == first.json()["usage"]
            and second.json()["bhiv"]["cost_usd"] == "0.000000"
        )
        assert len(fake.calls_for(PRIMARY)) == 1

        # Another caller of the same tenant shares the entry; another tenant does not.
        assert (
            ask(client(llm, tenant=tenant), prompt, temperature=0).headers["X-BHIV-Cache"] == "HIT"
        )
        assert (
            ask(client(llm, tenant="elsewhere"), prompt, temperature=0).headers["X-BHIV-Cache"]
            == "MISS"
        )
        # Different parameters are a different request; cache: false skips the cache.
        assert ask(api, prompt, temperature=1).headers["X-BHIV-Cache"] == "MISS"
        assert ask(api, prompt, temperature=0, cache=False).headers["X-BHIV-Cache"] == "MISS"

        statuses = [u["status"] for u in api.get("/usage").json()["items"]]
        assert statuses.count("cache_hit") == 1 and statuses.count("ok") == 3
        stats = api.get("/cache").json()
        assert stats["tenant"] == tenant and stats["entries"] == 2 and stats["hits"] == 2
        assert stats["ttl_seconds"] == 600

    def test_a_cached_answer_is_replayed_as_a_stream(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        prompt = unique()
        fake.script(PRIMARY, Reply("cached words here"))
        assert ask(api, prompt).status_code == 200
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        ) as r:
            assert r.headers["X-BHIV-Cache"] == "HIT"
            events = sse_events(r)
        assert (
            "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
            == "cached words here"
        )
        assert events[-2]["bhiv"]["cache_hit"] is True and len(fake.calls_for(PRIMARY)) == 1

    def test_each_callers_output_policy_applies_to_a_shared_entry(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        lax = keyed(llm, tenant, safety_action="flag")
        strict = keyed(llm, tenant, safety_action="redact")
        prompt = unique()
        fake.script(PRIMARY, Reply("Write to boss@example.com today."))
        assert "boss@example.com" in ask(lax, prompt).json()["choices"][0]["message"]["content"]
        r = ask(strict, prompt)
        assert r.headers["X-BHIV-Cache"] == "HIT"
        assert r.json()["choices"][0]["message"]["content"] == "Write to [REDACTED:email] today."

    def test_a_key_policy_can_turn_the_cache_off(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = keyed(llm, cache_enabled=False)
        prompt = unique()
        ask(api, prompt)
        assert (
            ask(api, prompt).headers["X-BHIV-Cache"] == "MISS" and len(fake.calls_for(PRIMARY)) == 2
        )

    def test_admins_empty_their_tenants_cache(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        api = client(llm, tenant=tenant)
        prompt = unique()
        ask(api, prompt)
        assert_problem(api.delete("/cache"), 403)
        assert client(llm, role="admin", tenant=tenant).delete("/cache").status_code == 204
        assert ask(api, prompt).headers["X-BHIV-Cache"] == "MISS"


class TestAccounting:
    def test_usage_and_cost_per_key_tenant_and_model(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        alice, bob = keyed(llm, tenant), keyed(llm, tenant)
        fake.default(PRIMARY, Reply("one two three"))
        fake.default(BACKUP, Reply("four five"))
        for _ in range(2):
            assert (
                ask(alice, unique()).status_code == 200
            )  # 3 prompt + 3 answer tokens at 0.5/1.5 per 1000
        assert ask(bob, unique(), model="backup").status_code == 200  # 3 + 2 at 0.1/0.2

        root = admin(llm)
        by_model = root.get(
            "/analytics/usage", params={"group_by": "model", "tenant": tenant}
        ).json()
        rows = {r["key"]: r for r in by_model["rows"]}
        assert rows["primary"]["requests"] == 2 and rows["primary"]["total_tokens"] == 12
        assert Decimal(rows["primary"]["cost_usd"]) == Decimal("0.012")
        assert rows["backup"]["requests"] == 1 and Decimal(rows["backup"]["cost_usd"]) == Decimal(
            "0.0007"
        )
        assert by_model["totals"]["requests"] == 3 and Decimal(
            by_model["totals"]["cost_usd"]
        ) == Decimal("0.0127")

        by_key = root.get("/analytics/usage", params={"group_by": "key", "tenant": tenant}).json()[
            "rows"
        ]
        assert sorted(r["requests"] for r in by_key) == [1, 2]
        by_tenant = root.get("/analytics/usage", params={"group_by": "tenant"}).json()["rows"]
        assert next(r for r in by_tenant if r["key"] == tenant)["requests"] == 3
        [day] = root.get("/analytics/usage", params={"group_by": "day", "tenant": tenant}).json()[
            "rows"
        ]
        assert len(day["key"]) == 10 and day["requests"] == 3

        # Callers see only their own numbers, whatever they ask for.
        own = alice.get("/analytics/usage", params={"tenant": tenant}).json()
        assert own["totals"]["requests"] == 2
        assert {
            u["subject"] for u in bob.get("/usage", params={"subject": "admin"}).json()["items"]
        } == {bob.get("/auth/verify").json()["subject"]}

    def test_time_filters_need_a_timezone(self, llm: ServiceProcess) -> None:
        api = client(llm)
        assert_problem(api.get("/usage", params={"since": "2026-01-01T00:00:00"}), 422, "since")
        assert api.get(
            "/usage", params={"since": "2026-01-01T00:00:00Z", "until": "2999-01-01T00:00:00Z"}
        ).is_success
        assert_problem(api.get("/analytics/usage", params={"group_by": "color"}), 422, "group_by")


def same_minute(seconds_needed: float = 8) -> None:
    """Wait, if need be, so the next requests fall in one rate window (windows are calendar minutes)."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        time.sleep(left + 0.05)


class TestLimits:
    def test_requests_per_minute(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = keyed(llm, requests_per_minute=2)
        same_minute()
        first = ask(api, unique())
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert ask(api, unique()).status_code == 200
        body = assert_problem(r := ask(api, unique()), 429, kind="rate-limited")
        assert body["limit"] == "requests" and 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert len(fake.calls_for(PRIMARY)) == 2
        quota = api.get("/quota").json()
        assert quota["requests_per_minute"] == 2 and quota["requests_this_minute"] == 2

    def test_concurrent_requests_cannot_exceed_the_limit(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = keyed(llm, requests_per_minute=5)
        same_minute()
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: ask(api, unique()).status_code, range(12)))
        assert statuses.count(200) == 5 and statuses.count(429) == 7

    def test_tokens_per_minute(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = keyed(llm, tokens_per_minute=30)
        same_minute()
        fake.default(PRIMARY, Reply("word " * 40))
        assert (
            ask(api, unique()).status_code == 200
        )  # admitted under the limit; its 40+ tokens use it up
        body = assert_problem(ask(api, unique()), 429, kind="rate-limited")
        assert body["limit"] == "tokens"

    def test_budget(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = keyed(llm, monthly_budget_usd="0.01")
        fake.default(PRIMARY, Reply("word " * 10))  # 3*0.5 + 10*1.5 per 1000 = 0.0165 USD
        assert ask(api, unique()).status_code == 200
        body = assert_problem(ask(api, unique()), 402, kind="budget-exceeded")
        assert body["budget_usd"] == "0.010000" and Decimal(body["spent_usd"]) == Decimal("0.0165")
        assert "monthly_budget_usd" in body["detail"]
        quota = api.get("/quota").json()
        assert quota["remaining_usd"] == "0" or Decimal(quota["remaining_usd"]) == 0
        assert Decimal(quota["spent_this_month_usd"]) == Decimal("0.0165")
        assert len(fake.calls_for(PRIMARY)) == 1
