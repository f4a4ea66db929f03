"""/query and conversations over real HTTP: history sent and stored, fitted to
the context window by truncation or summary, and kept private to its owner."""

from __future__ import annotations

from tests.service.llm.helpers import (
    INJECTION_TEXT,
    PRIMARY,
    TINY,
    admin,
    client,
    unique,
)
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


def summarising(messages: list[dict]) -> str:
    """Answers summary requests with a fixed summary, anything else with an echo."""
    if messages[0]["content"].startswith("Summarise the conversation"):
        return "SUMMARY: they talked about the weather."
    return "ok " + messages[-1]["content"][:10]


class TestQuery:
    def test_query_answers_with_its_own_shape(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        fake.script(PRIMARY, Reply("Returns are free for 30 days."))
        r = client(llm).post(
            "/query", json={"prompt": unique("Returns?"), "system": "Be terse.", "max_tokens": 50}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == "Returns are free for 30 days." and body["model"] == "primary"
        assert body["usage"]["source"] == "provider" and body["tokenizer"] == "cl100k_base"
        assert (
            body["cache_hit"] is False
            and body["conversation_id"] is None
            and body["context"] is None
        )
        sent = fake.calls_for(PRIMARY)[-1].body
        assert (
            sent["messages"][0] == {"role": "system", "content": "Be terse."}
            and sent["max_tokens"] == 50
        )

    def test_bad_queries_are_422_naming_the_field(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        assert_problem(api.post("/query", json={"prompt": ""}), 422, "prompt")
        assert_problem(api.post("/query", json={"prompt": "x", "max_tokens": 0}), 422, "max_tokens")
        assert_problem(api.post("/query", json={"prompt": "x", "colour": "red"}), 422, "colour")
        assert_problem(
            api.post("/query", json={"prompt": "x", "conversation_id": 0}), 422, "conversation_id"
        )
        assert fake.calls == []


class TestConversations:
    def test_history_is_sent_stored_and_listed(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        r = api.post("/conversations", json={"title": "Trip", "system_prompt": "You plan trips."})
        assert r.status_code == 201, r.text
        conv = r.json()
        assert conv["context_strategy"] == "truncate" and conv["message_count"] == 0
        assert r.headers["Location"] == f"/conversations/{conv['id']}"

        fake.script(PRIMARY, Reply("Goa is sunny."), Reply("Pack sunscreen."))
        first = api.post(
            "/query", json={"prompt": "Where should I go?", "conversation_id": conv["id"]}
        ).json()
        assert first["conversation_id"] == conv["id"] and first["context"]["history_messages"] == 0
        second = api.post(
            "/query", json={"prompt": "What do I pack?", "conversation_id": conv["id"]}
        ).json()
        assert second["answer"] == "Pack sunscreen." and second["context"] == {
            "history_messages": 2,
            "dropped_messages": 0,
            "summarized": False,
        }
        assert fake.calls_for(PRIMARY)[-1].body["messages"] == [
            {"role": "system", "content": "You plan trips."},
            {"role": "user", "content": "Where should I go?"},
            {"role": "assistant", "content": "Goa is sunny."},
            {"role": "user", "content": "What do I pack?"},
        ]
        history = api.get(f"/conversations/{conv['id']}/messages").json()
        assert [(m["role"], m["content"]) for m in history["items"]] == [
            ("user", "Where should I go?"),
            ("assistant", "Goa is sunny."),
            ("user", "What do I pack?"),
            ("assistant", "Pack sunscreen."),
        ]
        assert all(m["tokens"] > 0 and m["model_alias"] == "primary" for m in history["items"])
        assert api.get(f"/conversations/{conv['id']}").json()["message_count"] == 4
        assert conv["id"] in [c["id"] for c in api.get("/conversations").json()["items"]]

    def test_conversations_are_never_cached(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        conv = api.post("/conversations", json={}).json()
        for _ in range(2):
            r = api.post("/query", json={"prompt": "same words", "conversation_id": conv["id"]})
            assert r.json()["cache_hit"] is False
        assert len(fake.calls_for(PRIMARY)) == 2

    def test_oldest_turns_are_truncated_to_fit(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        conv = api.post("/conversations", json={"model": "tiny"}).json()
        fake.default(TINY, Reply("noted " * 40))
        for i in range(4):
            r = api.post(
                "/query",
                json={
                    "prompt": f"turn {i} " + "detail " * 40,
                    "conversation_id": conv["id"],
                    "max_tokens": 40,
                },
            )
            assert r.status_code == 200, r.text
        context = r.json()["context"]
        assert context["dropped_messages"] > 0 and context["summarized"] is False
        sent = fake.calls_for(TINY)[-1].body["messages"]
        assert (
            sent[-1]["content"].startswith("turn 3")
            and len(sent) == 1 + context["history_messages"]
        )
        assert not any(m["content"].startswith("turn 0") for m in sent)
        assert r.json()["usage"]["prompt_tokens"] + 40 <= 300
        # Everything is still in the stored history.
        assert api.get(f"/conversations/{conv['id']}").json()["message_count"] == 8

    def test_older_turns_can_be_summarised(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        conv = api.post(
            "/conversations", json={"model": "tiny", "context_strategy": "summarize"}
        ).json()
        fake.default(TINY, Reply(summarising))
        for i in range(4):
            r = api.post(
                "/query",
                json={
                    "prompt": f"turn {i} " + "weather " * 60,
                    "conversation_id": conv["id"],
                    "max_tokens": 40,
                },
            )
            assert r.status_code == 200, r.text
        summaries = [
            c
            for c in fake.calls_for(TINY)
            if c.body["messages"][0]["content"].startswith("Summarise the conversation")
        ]
        assert summaries and "turn 0" in summaries[0].body["messages"][1]["content"]
        stored = api.get(f"/conversations/{conv['id']}").json()
        assert stored["summary"] == "SUMMARY: they talked about the weather."
        last = fake.calls_for(TINY)[-1].body["messages"]
        assert last[0] == {
            "role": "system",
            "content": "Summary of the earlier conversation: "
            "SUMMARY: they talked about the weather.",
        }
        usage = api.get("/usage", params={"limit": 500}).json()["items"]
        assert {u["endpoint"] for u in usage} == {"query", "summarize"}

    def test_a_blocked_prompt_leaves_the_history_untouched(
        self, llm: ServiceProcess, fake: FakeOpenAI
    ) -> None:
        api = client(llm)
        conv = api.post("/conversations", json={}).json()
        assert_problem(
            api.post("/query", json={"prompt": INJECTION_TEXT, "conversation_id": conv["id"]}), 400
        )
        assert api.get(f"/conversations/{conv['id']}/messages").json()["total"] == 0

    def test_redacted_text_is_what_is_stored(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        conv = api.post("/conversations", json={}).json()
        api.post(
            "/query", json={"prompt": "I am at priya@example.in", "conversation_id": conv["id"]}
        )
        stored = api.get(f"/conversations/{conv['id']}/messages").json()["items"]
        assert stored[0]["content"] == "I am at [REDACTED:email]" and "priya" not in str(stored)

    def test_conversations_are_private(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        owner, other = client(llm), client(llm)
        conv = owner.post("/conversations", json={"title": "mine"}).json()
        assert_problem(other.get(f"/conversations/{conv['id']}"), 404)
        assert_problem(other.get(f"/conversations/{conv['id']}/messages"), 404)
        assert_problem(
            other.post("/query", json={"prompt": "x", "conversation_id": conv["id"]}), 404
        )
        assert_problem(admin(llm).delete(f"/conversations/{conv['id']}"), 404)
        assert conv["id"] not in [c["id"] for c in other.get("/conversations").json()["items"]]

    def test_update_and_delete(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        api = client(llm)
        conv = api.post("/conversations", json={"title": "old"}).json()
        r = api.patch(
            f"/conversations/{conv['id']}",
            json={"title": "new", "model": "claude", "context_strategy": "summarize"},
        )
        assert r.status_code == 200 and r.json()["title"] == "new" and r.json()["model"] == "claude"
        assert_problem(
            api.patch(f"/conversations/{conv['id']}", json={"model": "nope"}), 422, "model"
        )
        assert_problem(
            api.patch(f"/conversations/{conv['id']}", json={"context_strategy": None}),
            422,
            "context_strategy",
        )
        assert_problem(api.post("/conversations", json={"model": "nope"}), 422, "model")
        api.post("/query", json={"prompt": "hello", "conversation_id": conv["id"]})
        assert api.delete(f"/conversations/{conv['id']}").status_code == 204
        assert_problem(api.get(f"/conversations/{conv['id']}"), 404)
