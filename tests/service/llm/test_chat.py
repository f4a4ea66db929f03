"""Chat completions over real HTTP: the OpenAI shape, routing with retries and
fallbacks, timeouts, streaming, token counting, providers and their keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.conftest import run_service
from tests.service.llm.helpers import (
    BACKUP,
    CHEAP,
    CLAUDE,
    FAKE_KEY,
    PRIMARY,
    SLOW,
    admin,
    ask,
    client,
    keyed,
    registry_env,
    sse_events,
    unique,
)
from tests.support.fake_openai import Fail, FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def usage_rows(server: ServiceProcess, api: httpx.Client) -> list[dict]:
    return api.get("/usage", params={"limit": 500}).json()["items"]


class TestCompletions:
    def test_answer_has_the_openai_shape_usage_and_cost(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        fake.script(PRIMARY, Reply("Paris is the capital of France."))
        r = ask(api, unique("Capital of France?"), temperature=0.2, max_tokens=20, seed=7)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == "primary"
        assert body["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris is the capital of France."},
                "finish_reason": "stop",
            }
        ]
        usage = body["usage"]
        # The fake counts words, plus one per message: 4 words, 1 message.
        assert usage == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        ext = body["bhiv"]
        assert ext["usage_source"] == "provider" and ext["tokenizer"] == "cl100k_base"
        # 5 * 0.5/1000 + 6 * 1.5/1000
        assert Decimal(ext["cost_usd"]) == Decimal("0.0115")
        assert (
            ext["provider"] == "fake" and ext["provider_model"] == PRIMARY and not ext["cache_hit"]
        )
        assert r.headers["X-BHIV-Cache"] == "MISS" and r.headers["X-BHIV-Model"] == "primary"

        sent = fake.calls_for(PRIMARY)[-1].body
        assert sent["model"] == PRIMARY and sent["temperature"] == 0.2 and sent["max_tokens"] == 20
        assert sent["seed"] == 7 and sent["stream"] is False

        [row] = usage_rows(llm, api)
        assert (
            row["status"] == "ok" and row["model_alias"] == "primary" and row["total_tokens"] == 11
        )
        assert Decimal(row["cost_usd"]) == Decimal("0.0115")

    def test_the_provider_key_is_sent_but_never_shown_or_logged(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        assert ask(api, unique()).status_code == 200
        assert fake.calls_for(PRIMARY)[-1].headers["authorization"] == f"Bearer {FAKE_KEY}"
        providers = admin(llm).get("/providers").text
        assert FAKE_KEY not in providers and '"api_key_configured":true' in providers
        assert FAKE_KEY not in llm.log()

    def test_content_parts_and_developer_role_are_accepted(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        r = api.post(
            "/v1/chat/completions",
            json={
                "model": "primary",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hello "},
                            {"type": "text", "text": "there"},
                        ],
                    },
                ],
            },
        )
        assert r.status_code == 200, r.text
        assert fake.calls_for(PRIMARY)[-1].body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ]

    def test_bad_input_is_a_422_naming_the_field(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        assert_problem(
            api.post("/v1/chat/completions", json={"model": "primary", "messages": []}),
            422,
            "messages",
        )
        assert_problem(ask(api, "x", temperature=3), 422, "temperature")
        assert_problem(ask(api, "x", n=2), 422, "n")
        assert_problem(ask(api, "x", tools=[{"type": "function"}]), 422, "tools")
        assert_problem(ask(api, "x", stop=["a", "b", "c", "d", "e"]), 422, "stop")
        assert_problem(
            api.post(
                "/v1/chat/completions",
                json={"model": "primary", "messages": [{"role": "robot", "content": "x"}]},
            ),
            422,
            "messages.0.role",
        )
        assert_problem(ask(api, "bad \x00 byte"), 422)
        assert fake.calls == []
        assert usage_rows(llm, api) == []

    def test_unknown_alias_is_a_404_naming_the_field(self, llm: ServiceProcess) -> None:
        body = assert_problem(
            ask(client(llm), "x", model="nope"), 404, "model", kind="model-not-found"
        )
        assert "primary" in body["detail"]
        assert_problem(ask(client(llm), "x", fallbacks=["nope"]), 404, "fallbacks.0")

    def test_viewers_cannot_query(self, llm: ServiceProcess) -> None:
        assert_problem(ask(client(llm, role="viewer"), "x"), 403)
        assert_problem(httpx.post(f"{llm.url}/v1/chat/completions", json={}), 401)

    def test_too_long_for_the_context_window_is_a_400_before_any_call(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        body = assert_problem(
            ask(api, "word " * 400, model="tiny"), 400, "messages", kind="context-length-exceeded"
        )
        assert "300" in body["detail"]
        assert_problem(ask(api, "short", model="tiny", max_tokens=100), 422, "max_tokens")
        assert fake.calls == []

    def test_v1_models_lists_enabled_aliases(self, llm: ServiceProcess) -> None:
        r = client(llm).get("/v1/models")
        assert r.status_code == 200
        cards = {m["id"]: m for m in r.json()["data"]}
        assert {"primary", "backup", "claude"} <= set(cards)
        assert (
            cards["claude"]["owned_by"] == "fake-anthropic"
            and cards["primary"]["object"] == "model"
        )


class TestRouting:
    def test_a_failing_call_is_retried_on_the_same_model(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Fail(500), Reply("second time lucky"))
        r = ask(client(llm), unique())
        assert r.status_code == 200, r.text
        assert (
            r.json()["model"] == "primary"
            and r.json()["choices"][0]["message"]["content"] == "second time lucky"
        )
        outcomes = [
            (a["model"], a["outcome"], a.get("status")) for a in r.json()["bhiv"]["attempts"]
        ]
        assert outcomes == [("primary", "error", 500), ("primary", "ok", None)]

    def test_errors_fall_back_to_the_next_model(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Fail(503), Fail(429))
        fake.script(BACKUP, Reply("from the backup"))
        api = client(llm)
        r = ask(api, unique())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (
            body["model"] == "backup"
            and body["choices"][0]["message"]["content"] == "from the backup"
        )
        assert [a["model"] for a in body["bhiv"]["attempts"]] == ["primary", "primary", "backup"]
        assert len(fake.calls_for(PRIMARY)) == 2  # the first call and one retry (max_retries=1)
        # Billed at the backup's prices: 3 prompt tokens * 0.1 + 3 answer tokens * 0.2, per 1000.
        assert Decimal(body["bhiv"]["cost_usd"]) == Decimal("0.0009")
        [row] = usage_rows(llm, api)
        assert row["model_alias"] == "backup" and row["attempts"] == 3

    def test_request_fallbacks_override_the_models(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.default(PRIMARY, Fail(502))
        r = ask(client(llm), unique(), fallbacks=["claude"])
        assert r.status_code == 200 and r.json()["model"] == "claude"
        assert fake.calls_for(BACKUP) == []

    def test_every_model_failing_is_a_502_listing_attempts(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.default(PRIMARY, Fail(500, "primary is down"))
        fake.default(BACKUP, Fail(503, "backup is down"))
        api = client(llm)
        body = assert_problem(ask(api, unique()), 502, kind="upstream-failed")
        assert [(a["model"], a["status"]) for a in body["attempts"]] == [
            ("primary", 500),
            ("primary", 500),
            ("backup", 503),
            ("backup", 503),
        ]
        assert "backup is down" in body["attempts"][-1]["error"]
        [row] = usage_rows(llm, api)
        assert row["status"] == "error" and row["attempts"] == 4 and Decimal(row["cost_usd"]) == 0

    def test_a_request_the_provider_refuses_is_not_retried_elsewhere(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Fail(400, "max_tokens is too large for this model"))
        body = assert_problem(ask(client(llm), unique()), 400, kind="upstream-rejected")
        assert "max_tokens is too large" in body["detail"]
        assert len(fake.calls_for(PRIMARY)) == 1 and fake.calls_for(BACKUP) == []

    def test_timeouts_are_retried_then_fall_back(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.default(SLOW, Reply("too late", delay=3))
        fake.script(BACKUP, Reply("in time"))
        r = ask(client(llm), unique(), model="slow")
        assert r.status_code == 200, r.text
        attempts = r.json()["bhiv"]["attempts"]
        assert [(a["model"], a["outcome"]) for a in attempts] == [
            ("slow", "timeout"),
            ("slow", "timeout"),
            ("backup", "ok"),
        ]
        assert all(1000 <= a["duration_ms"] < 2900 for a in attempts[:2])

    def test_only_timeouts_is_a_504(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        fake.default(SLOW, Reply("too late", delay=3))
        body = assert_problem(
            ask(client(llm), unique(), model="slow", fallbacks=[]), 504, kind="upstream-timeout"
        )
        assert [a["outcome"] for a in body["attempts"]] == ["timeout", "timeout"]

    def test_a_missing_key_variable_is_named_and_falls_back(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        root = admin(llm)
        name = unique("nokey").replace(" ", "-")
        assert (
            root.post(
                "/providers",
                json={
                    "name": name,
                    "base_url": fake.base_url,
                    "api_key_env": "BHIV_LLM_KEY_NOT_SET_ANYWHERE",
                },
            ).status_code
            == 201
        )
        r = root.post(
            "/models",
            json={"alias": name, "provider": name, "model": "whatever", "fallbacks": ["backup"]},
        )
        assert r.status_code == 201, r.text
        r = ask(client(llm), unique(), model=name)
        assert r.status_code == 200 and r.json()["model"] == "backup"
        first = r.json()["bhiv"]["attempts"][0]
        assert "BHIV_LLM_KEY_NOT_SET_ANYWHERE is not set" in first["error"]
        assert fake.calls_for("whatever") == []


@pytest.fixture(scope="module")
def breaker_llm(
    backend: str, request: pytest.FixtureRequest, fake_server: FakeOpenAI
) -> Iterator[ServiceProcess]:
    """A service that pauses a model after 2 consecutive failures, for 1 second."""
    env = {
        **registry_env(fake_server),
        "BHIV_LLM_BREAKER_FAILURES": "2",
        "BHIV_LLM_BREAKER_SECONDS": "1",
    }
    yield from run_service("llm-query", backend, request, **env)


class TestCircuitBreaker:
    def test_a_failing_model_is_paused_then_tried_again(
        self, breaker_llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(breaker_llm)
        fake.default(PRIMARY, Fail(500))
        first = ask(api, unique())
        assert first.json()["model"] == "backup" and len(fake.calls_for(PRIMARY)) == 2
        # Paused: the backup answers without a call to the failing model.
        second = ask(api, unique())
        assert second.json()["model"] == "backup" and len(fake.calls_for(PRIMARY)) == 2
        skipped = second.json()["bhiv"]["attempts"][0]
        assert skipped["outcome"] == "skipped" and "paused" in skipped["error"]
        # After the pause one trial call goes through; it succeeds, so the model is back.
        time.sleep(1.1)
        fake.default(PRIMARY, Reply("recovered"))
        assert ask(api, unique()).json()["model"] == "primary"
        assert ask(api, unique()).json()["model"] == "primary"

    def test_refused_requests_do_not_pause_a_model(
        self, breaker_llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(breaker_llm)
        for _ in range(3):
            fake.script(CHEAP, Fail(400, "bad request"))
            assert_problem(ask(api, unique(), model="cheap"), 400, kind="upstream-rejected")
        assert ask(api, unique(), model="cheap").status_code == 200


class TestTokens:
    def test_without_provider_usage_the_tokenizer_counts(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Reply("hello world", usage=False))
        r = ask(client(llm), "Say hello " + unique())
        assert r.status_code == 200
        ext, usage = r.json()["bhiv"], r.json()["usage"]
        assert ext["usage_source"] == "cl100k_base" and ext["tokenizer"] == "cl100k_base"
        assert usage["completion_tokens"] == 2  # "hello world" is two cl100k tokens
        assert usage["prompt_tokens"] > 3

    def test_a_model_configured_for_estimates_says_so(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(CHEAP, Reply("x" * 40, usage=False))
        r = ask(client(llm), unique(), model="cheap")
        ext, usage = r.json()["bhiv"], r.json()["usage"]
        assert ext["tokenizer"] == "estimate" and ext["usage_source"] == "estimate"
        assert usage["completion_tokens"] == 10  # 40 characters / 4


class TestStreaming:
    def test_chunks_then_finish_then_usage_then_done(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Reply("One two three. Four five."))
        api = client(llm)
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream"
            )
            events = sse_events(r)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(
            c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
        )
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "One two three. Four five."
        finish = chunks[-2]
        assert (
            finish["choices"][0]["finish_reason"] == "stop"
            and finish["bhiv"]["usage_source"] == "provider"
        )
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
        assert fake.calls_for(PRIMARY)[-1].body["stream"] is True
        [row] = usage_rows(llm, api)
        assert row["stream"] is True and row["status"] == "ok" and row["completion_tokens"] == 5

    def test_a_stream_falls_back_before_its_first_token(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Fail(503), Fail(503))
        fake.script(BACKUP, Reply("backup streams"))
        with client(llm).stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as r:
            assert r.status_code == 200 and r.headers["X-BHIV-Model"] == "backup"
            events = sse_events(r)
        assert events[-1] == "[DONE]" and events[1]["model"] == "backup"
        assert (
            "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
            == "backup streams"
        )

    def test_a_stream_that_cannot_start_is_a_problem(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.default(PRIMARY, Fail(500))
        fake.default(BACKUP, Fail(500))
        r = client(llm).post(
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": unique()}],
            },
        )
        assert_problem(r, 502, kind="upstream-failed")

    def test_a_stream_broken_midway_ends_with_an_error_event(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(PRIMARY, Reply("alpha beta gamma delta epsilon", break_after=2))
        api = client(llm)
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as r:
            events = sse_events(r)
        assert "error" in events[-1] and "[DONE]" not in events
        [row] = usage_rows(llm, api)
        assert row["status"] == "error" and row["stream"] is True

    def test_a_client_that_leaves_is_still_billed_for_what_was_made(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = keyed(
            llm, safety_action="flag"
        )  # chunks pass at once, so the client sees them arrive
        fake.script(PRIMARY, Reply("one two three four five six seven eight", chunk_delay=0.3))
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as r:
            lines = r.iter_lines()
            while '"content": "one "' not in next(lines):
                pass
        deadline = time.monotonic() + 10
        while not (rows := usage_rows(llm, api)) and time.monotonic() < deadline:
            time.sleep(0.1)
        [row] = rows
        assert (
            row["status"] == "error" and row["error"] == "the client disconnected during the stream"
        )
        assert 1 <= row["completion_tokens"] < 8 and Decimal(row["cost_usd"]) > 0


class TestAnthropic:
    def test_messages_api_whole_and_streamed(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        fake.script(CLAUDE, Reply("Bonjour."), Reply("Streamed from Claude."))
        api = client(llm)
        r = api.post(
            "/v1/chat/completions",
            json={
                "model": "claude",
                "max_tokens": 64,
                "messages": [
                    {"role": "system", "content": "Answer in French."},
                    {"role": "user", "content": unique("Hello")},
                ],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Bonjour."
        assert r.json()["bhiv"]["usage_source"] == "provider"
        sent = fake.calls_for(CLAUDE)[-1]
        assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == FAKE_KEY
        assert sent.headers["anthropic-version"] and sent.body["system"] == "Answer in French."
        assert sent.body["max_tokens"] == 64 and [m["role"] for m in sent.body["messages"]] == [
            "user"
        ]

        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "claude",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as s:
            events = sse_events(s)
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
        )
        assert text == "Streamed from Claude." and events[-2]["usage"]["completion_tokens"] == 3
        assert (
            fake.calls_for(CLAUDE)[-1].body["max_tokens"] == 1024
        )  # Anthropic requires it; ours is the default
