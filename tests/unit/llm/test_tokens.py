"""Token counting: the real tokenizer where installed, the estimate otherwise."""

from __future__ import annotations

from bhiv.llm import tokens
from bhiv.llm.tokens import Counter, counter


def test_cl100k_counts_real_tokens_without_a_download() -> None:
    c = counter("cl100k_base")
    assert c.method == "cl100k_base"
    assert c.text("hello world") == 2
    assert c.text("") == 0
    assert c.text("<|endoftext|>") > 1  # special tokens in user text are counted as text


def test_estimate_is_four_characters_a_token() -> None:
    c = counter("estimate")
    assert c.method == "estimate" and c.text("x" * 9) == 3


def test_chat_framing_is_counted() -> None:
    c = Counter("cl100k_base")
    one = c.message({"role": "user", "content": "hello world"})
    assert one == 3 + 1 + 2  # framing + "user" + content
    assert c.message({"role": "user", "content": "hello world", "name": "bob"}) == one + 1 + 1
    assert c.messages([{"role": "user", "content": "hello world"}]) == one + 3


def test_content_parts_are_joined() -> None:
    assert tokens.message_text({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}) == "ab"
    assert tokens.message_text({"content": None}) == ""


def test_degrades_to_the_estimate_when_the_tokenizer_is_missing(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(tokens, "_encoding", lambda: None)
    assert counter("cl100k_base").method == "estimate"
