"""Pure pieces of the pipeline: settings, cost, cache keys, stream segments,
error classification, provider translation and history fitting."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from bhiv.llm import cache, conversations, pipeline
from bhiv.llm.providers import anthropic
from bhiv.llm.providers.base import ProviderError, ProviderTarget, upstream_message
from bhiv.llm.routing import Route
from bhiv.llm.settings import LlmSettings

TARGET = ProviderTarget(
    provider="p",
    kind="openai",
    base_url="http://127.0.0.1:1/v1",
    api_key_env=None,
    timeout_seconds=5,
    model="m",
)


def route(**prices: str) -> Route:
    return Route(
        alias="a",
        target=TARGET,
        max_retries=0,
        input_price_per_1k=Decimal(prices.get("input", "0.5")),
        output_price_per_1k=Decimal(prices.get("output", "1.5")),
        context_window=1000,
        max_output_tokens=None,
        tokenizer="cl100k_base",
    )


class TestSettings:
    def test_registry_from_json_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "BHIV_LLM_PROVIDERS", '[{"name": "ollama", "base_url": "http://127.0.0.1:11434/v1"}]'
        )
        monkeypatch.setenv(
            "BHIV_LLM_MODELS", '[{"alias": "llama", "provider": "ollama", "model": "llama3"}]'
        )
        monkeypatch.setenv("BHIV_LLM_BLOCKLIST", "falcon, eagle ,")
        s = LlmSettings()
        assert (
            s.port == 8004
            and s.llm_providers[0].kind == "openai"
            and s.llm_providers[0].max_retries == 2
        )
        assert s.llm_models[0].tokenizer == "cl100k_base" and s.llm_blocklist == ["falcon", "eagle"]

    def test_key_variables_must_be_prefixed(self) -> None:
        with pytest.raises(ValidationError, match="api_key_env"):
            LlmSettings(
                llm_providers=[
                    {"name": "x", "base_url": "http://h/v1", "api_key_env": "BHIV_JWT_SECRET"}
                ]
            )

    def test_aliases_are_unique(self) -> None:
        model = {"alias": "a", "provider": "p", "model": "m"}
        with pytest.raises(ValidationError, match="declared twice"):
            LlmSettings(llm_models=[model, model])


class TestAccounting:
    def test_cost_per_thousand_tokens(self) -> None:
        assert pipeline.cost_of(route(), 1000, 2000) == Decimal("3.500000")
        assert pipeline.cost_of(route(input="0.00015", output="0.0006"), 7, 3) == Decimal(
            "0.000003"
        )

    def test_cache_keys_depend_on_everything_that_shapes_an_answer(self) -> None:
        msgs = [{"role": "user", "content": "hi"}]
        key = cache.cache_key(["a"], msgs, {"temperature": 0})
        assert key == cache.cache_key(["a"], [dict(msgs[0])], {"temperature": 0}) and len(key) == 64
        assert key != cache.cache_key(["a", "b"], msgs, {"temperature": 0})
        assert key != cache.cache_key(["a"], msgs, {"temperature": 1})
        assert key != cache.cache_key(
            ["a"], [{"role": "user", "content": "hi!"}], {"temperature": 0}
        )


class TestStreamSegments:
    @pytest.mark.parametrize(
        ("text", "cut"),
        [
            ("no end yet", 0),
            ("One. Two", 4),
            ("One. Two! Three", 9),
            ("mail a.b@example.com now", 0),  # a dot inside an address is no sentence end
            ("line\nnext", 5),
        ],
    )
    def test_cuts_after_the_last_sentence_end(self, text: str, cut: int) -> None:
        assert pipeline._segment_end(text) == cut

    def test_long_text_without_an_end_is_cut_at_a_space(self) -> None:
        text = "word " * 500
        cut = pipeline._segment_end(text)
        assert 0 < cut <= pipeline.MAX_SEGMENT and text[cut - 1] == " "


class TestProviderErrors:
    @pytest.mark.parametrize(
        ("status", "timeout", "retryable", "client_fault"),
        [
            (500, False, True, False),
            (429, False, True, False),
            (None, False, True, False),
            (None, True, True, False),
            (400, False, False, True),
            (401, False, False, False),
            (404, False, False, False),
        ],
    )
    def test_classification(
        self, status: int | None, timeout: bool, retryable: bool, client_fault: bool
    ) -> None:
        err = ProviderError("x", status=status, timeout=timeout)
        assert (err.retryable, err.client_fault) == (retryable, client_fault)

    def test_upstream_messages_are_short_and_plain(self) -> None:
        assert upstream_message(b'{"error": {"message": "model not found"}}') == "model not found"
        assert upstream_message(b"<html>\n bad   gateway </html>") == "<html> bad gateway </html>"
        assert len(upstream_message(b"x" * 5000)) == 300

    def test_a_missing_key_variable_is_named_not_guessed(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("BHIV_LLM_KEY_ABSENT", raising=False)
        target = ProviderTarget("p", "openai", "http://h", "BHIV_LLM_KEY_ABSENT", 5, "m")
        with pytest.raises(ProviderError, match="BHIV_LLM_KEY_ABSENT is not set"):
            target.api_key()
        monkeypatch.setenv("BHIV_LLM_KEY_ABSENT", "sk-1")
        assert target.api_key() == "sk-1"


class TestAnthropicTranslation:
    def test_system_and_parameters(self) -> None:
        body = anthropic._body(
            TARGET,
            [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
            {"temperature": 0.3, "stop": "END", "seed": 5, "presence_penalty": 1},
            stream=True,
        )
        assert body["system"] == "Be brief.\n\nBe kind." and body["stream"] is True
        assert body["messages"] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        assert body["stop_sequences"] == ["END"] and body["temperature"] == 0.3
        assert body["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS
        assert "seed" not in body and "presence_penalty" not in body


class TestHistory:
    def test_keeps_the_newest_messages_that_fit(self) -> None:
        history = [SimpleNamespace(id=i, tokens=t) for i, t in enumerate([50, 40, 30, 20])]
        dropped, kept = conversations._split(history, 55)  # type: ignore[arg-type]
        assert [m.id for m in kept] == [2, 3] and [m.id for m in dropped] == [0, 1]
        assert conversations._split(history, 0)[1] == []  # type: ignore[arg-type]
        assert conversations._split(history, 1000)[0] == []  # type: ignore[arg-type]
