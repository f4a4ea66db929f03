"""Queue order with aging, least-loaded routing, and the engine's settings."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from bhiv.agents.models import Agent, AgentKind
from bhiv.agents.queue import least_loaded, sort_key
from bhiv.agents.settings import AgentsSettings

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_priority_then_aging() -> None:
    aging = 30.0
    # At the same moment, higher priority goes first.
    assert sort_key(T0, 5, aging) < sort_key(T0, 0, aging)
    # A task that waited longer than (priority gap x aging) overtakes a higher-priority newcomer.
    old_low = sort_key(T0, 0, aging)
    assert sort_key(T0 + dt.timedelta(seconds=89), 3, aging) < old_low
    assert sort_key(T0 + dt.timedelta(seconds=91), 3, aging) > old_low


def agent(id_: int, caps: list[str], limit: int) -> Agent:
    return Agent(
        id=id_, name=f"a{id_}", kind=AgentKind.llm, capabilities=caps, max_concurrency=limit
    )


def test_least_loaded_relative_to_capacity() -> None:
    small, big, other = agent(1, ["x"], 2), agent(2, ["x"], 10), agent(3, ["y"], 10)
    pool = [small, big, other]
    assert least_loaded(pool, "x", {1: 1, 2: 3}) is big  # 50% busy vs 30% busy
    assert least_loaded(pool, "x", {1: 0, 2: 0}) is small  # a tie goes to the first
    assert least_loaded(pool, "x", {1: 2, 2: 10}) is None  # everyone full
    assert least_loaded(pool, "z", {}) is None  # nobody capable


def test_service_urls_merge_over_local_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BHIV_AGENTS_SERVICE_URLS", json.dumps({"crm": "http://crm:8002"}))
    urls = AgentsSettings().agents_service_urls
    assert urls["crm"] == "http://crm:8002" and urls["logistics"] == "http://127.0.0.1:8001"
    assert set(urls) >= {"logistics", "crm", "llm-query", "integrations"}
