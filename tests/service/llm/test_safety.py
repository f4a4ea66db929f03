"""Safety filtering over real HTTP: before and after the call, per-key policies
(block, redact, flag), blocklists, prompt injection, streams, and the record
each decision leaves."""

from __future__ import annotations

from typing import Any

import httpx

from tests.service.llm.helpers import (
    INJECTION_TEXT,
    PRIMARY,
    admin,
    ask,
    client,
    keyed,
    sse_events,
    unique,
)
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess

CARD = "4111 1111 1111 1111"  # a Luhn-valid test card number
NOT_A_CARD = "4111 1111 1111 1112"  # one digit off: fails the Luhn check


def with_policy(server: ServiceProcess, action: str, **policy: Any) -> httpx.Client:
    return keyed(server, safety_action=action, **policy)


def decisions(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    return api.get("/safety/decisions", params={"limit": 500, **params}).json()["items"]


class TestInput:
    def test_pii_is_redacted_before_the_provider_sees_it(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)  # the default policy: redact
        prompt = f"Mail asha.rao@example.com or call +91 98450 12345, card {CARD}, not {NOT_A_CARD}. {unique()}"
        r = ask(api, prompt)
        assert r.status_code == 200, r.text
        sent = fake.calls_for(PRIMARY)[-1].body["messages"][0]["content"]
        assert "asha.rao@example.com" not in sent and "98450" not in sent and CARD not in sent
        assert (
            "[REDACTED:email]" in sent
            and "[REDACTED:phone]" in sent
            and "[REDACTED:credit_card]" in sent
        )
        assert NOT_A_CARD in sent
        verdict = r.json()["bhiv"]["safety"]["input"]
        assert verdict["decision"] == "redacted" and verdict["score"] == 0.9
        assert sorted(verdict["categories"]) == ["credit_card", "email", "phone"]

        [out, inp] = decisions(api, request_id=r.headers["X-Request-ID"])
        assert (
            inp["direction"] == "input"
            and inp["decision"] == "redacted"
            and inp["policy_action"] == "redact"
        )
        assert "email x1" in inp["reason"] and inp["score"] == 0.9
        assert {f["category"] for f in inp["findings"]} == {"credit_card", "email", "phone"}
        assert "asha" not in str(inp)  # decisions never keep the matched text
        assert (
            out["direction"] == "output"
            and out["decision"] == "allowed"
            and out["reason"] == "no findings"
        )

    def test_a_blocking_policy_refuses_and_calls_nothing(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = with_policy(llm, "block")
        body = assert_problem(ask(api, f"my card is {CARD}"), 400, kind="content-blocked")
        assert body["safety"]["categories"] == ["credit_card"] and "credit_card" in body["detail"]
        assert fake.calls == []
        [d] = decisions(api)
        assert d["decision"] == "blocked" and d["policy_action"] == "block"
        [usage] = api.get("/usage").json()["items"]
        assert usage["status"] == "blocked" and usage["cost_usd"] == "0.000000"

    def test_a_flagging_policy_passes_text_unchanged_and_records(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = with_policy(llm, "flag")
        r = ask(api, f"write to ops@example.com {unique()}")
        assert (
            r.status_code == 200
            and "ops@example.com" in fake.calls_for(PRIMARY)[-1].body["messages"][0]["content"]
        )
        assert r.json()["bhiv"]["safety"]["input"]["decision"] == "flagged"
        assert [d["decision"] for d in decisions(api, direction="input")] == ["flagged"]

    def test_blocklists_follow_the_policy(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        redacting = with_policy(llm, "redact", blocklist=["Project Falcon", "codename"])
        r = ask(redacting, f"Status of project falcon? {unique()}")
        assert r.status_code == 200
        assert (
            fake.calls_for(PRIMARY)[-1]
            .body["messages"][0]["content"]
            .startswith("Status of [REDACTED:blocklist]?")
        )
        # Whole words only: "codenames" is not "codename".
        ask(redacting, f"codenames {unique()}")
        assert "codenames" in fake.calls_for(PRIMARY)[-1].body["messages"][0]["content"]
        blocking = with_policy(llm, "block", blocklist=["Project Falcon"])
        assert_problem(ask(blocking, "PROJECT FALCON launch date"), 400, kind="content-blocked")

    def test_prompt_injection_blocks_even_when_redacting(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        body = assert_problem(ask(client(llm), INJECTION_TEXT), 400, kind="content-blocked")
        assert (
            body["safety"]["categories"] == ["prompt_injection"] and body["safety"]["score"] >= 0.5
        )
        assert "cannot be redacted" in body["detail"]
        flagged = with_policy(llm, "flag")
        assert (
            ask(flagged, INJECTION_TEXT + unique()).json()["bhiv"]["safety"]["input"]["decision"]
            == "flagged"
        )
        # A system prompt may legitimately say what the model is now.
        r = flagged.post(
            "/v1/chat/completions",
            json={
                "model": "primary",
                "messages": [
                    {"role": "system", "content": "You are now a helpful support agent."},
                    {"role": "user", "content": unique("hello")},
                ],
            },
        )
        assert r.json()["bhiv"]["safety"]["input"]["decision"] == "allowed"

    def test_the_threshold_is_per_policy(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        lenient = with_policy(llm, "block", injection_threshold=0.95)
        assert ask(lenient, INJECTION_TEXT).status_code == 200


class TestOutput:
    def test_answers_are_redacted(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        fake.script(PRIMARY, Reply("Reach Ravi at ravi@example.org or 415-555-0100."))
        r = ask(client(llm), unique())
        content = r.json()["choices"][0]["message"]["content"]
        assert content == "Reach Ravi at [REDACTED:email] or [REDACTED:phone]."
        assert r.json()["bhiv"]["safety"]["output"]["decision"] == "redacted"

    def test_a_blocked_answer_is_empty_with_content_filter(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = with_policy(llm, "block")
        fake.script(PRIMARY, Reply(f"The card is {CARD}."))
        r = ask(api, unique())
        assert r.status_code == 200
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == "" and choice["finish_reason"] == "content_filter"
        assert [d["decision"] for d in decisions(api, direction="output")] == ["blocked"]

    def test_streams_are_filtered_sentence_by_sentence(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        fake.script(
            PRIMARY, Reply("First sentence is fine. Mail me at a.b@example.com please. The end.")
        )
        with client(llm).stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": unique()}],
            },
        ) as r:
            events = sse_events(r)
        pieces = [
            e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"][0]["delta"]
        ]
        assert (
            "".join(p for p in pieces if p)
            == "First sentence is fine. Mail me at [REDACTED:email] please. The end."
        )
        assert events[-2]["bhiv"]["safety"]["output"]["decision"] == "redacted"

    def test_a_blocked_stream_stops_with_content_filter(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = with_policy(llm, "block")
        fake.script(PRIMARY, Reply(f"Safe start. Card {CARD} follows. More text after."))
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
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert (
            text == "Safe start." and events[-2]["choices"][0]["finish_reason"] == "content_filter"
        )
        assert "1111" not in str(events)


class TestChecker:
    def test_dry_run_check(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        r = api.post(
            "/safety/check", json={"text": "IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789"}
        )
        assert r.status_code == 200
        body = r.json()
        assert (
            body["decision"] == "redacted"
            and body["text"] == "IBAN [REDACTED:iban], SSN [REDACTED:ssn]"
        )
        r = api.post("/safety/check", json={"text": INJECTION_TEXT, "action": "flag"})
        assert (
            r.json()["decision"] == "flagged"
            and r.json()["findings"][0]["category"] == "prompt_injection"
        )
        assert decisions(api) == [] and fake.calls == []  # a dry run records and calls nothing
        assert_problem(api.post("/safety/check", json={"text": ""}), 422, "text")
        assert_problem(
            api.post("/safety/check", json={"text": "x", "action": "shout"}), 422, "action"
        )

    def test_callers_see_only_their_own_decisions(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        mine = client(llm)
        ask(mine, unique())
        assert {d["subject"] for d in decisions(mine, subject="someone-else")} <= {
            decisions(mine)[0]["subject"]
        }
        assert len({d["subject"] for d in decisions(admin(llm))}) > 1


class TestPolicies:
    def test_policy_crud_and_validation(self, llm: ServiceProcess) -> None:
        root = admin(llm)
        subject = f"apikey:{unique('k').split()[1]}"
        assert root.put(f"/policies/{subject}", json={"safety_action": "flag"}).status_code == 201
        r = root.put(
            f"/policies/{subject}", json={"safety_action": "block", "requests_per_minute": 5}
        )
        assert (
            r.status_code == 200
            and r.json()["requests_per_minute"] == 5
            and r.json()["blocklist"] == []
        )
        assert root.get(f"/policies/{subject}").json()["safety_action"] == "block"
        assert_problem(
            root.put(f"/policies/{subject}", json={"safety_action": "shout"}), 422, "safety_action"
        )
        assert_problem(
            root.put(f"/policies/{subject}", json={"requests_per_minute": 0}),
            422,
            "requests_per_minute",
        )
        assert_problem(client(llm).put(f"/policies/{subject}", json={}), 403)
        assert root.delete(f"/policies/{subject}").status_code == 204
        assert_problem(root.get(f"/policies/{subject}"), 404)
        # Without a row, "default" shows the settings.
        assert root.get("/policies/default").json()["safety_action"] == "redact"
