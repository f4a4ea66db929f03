"""The model registry over real HTTP: nothing ships configured, configuration is
applied at start and read-only over the API, the API manages its own entries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import run_service
from tests.service.llm.helpers import admin, ask, client, unique
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.problems import assert_problem
from tests.support.servers import ServiceProcess


@pytest.fixture(scope="module")
def bare(backend: str, request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """The service as it ships: no provider, no model."""
    yield from run_service("llm-query", backend, request)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class TestNothingConfigured:
    def test_queries_are_503_naming_the_settings(self, bare: ServiceProcess) -> None:
        api = client(bare)
        for r in (ask(api, "hello"), api.post("/query", json={"prompt": "hello"})):
            body = assert_problem(r, 503, kind="no-model-configured")
            assert "BHIV_LLM_MODELS" in body["detail"] and "POST /models" in body["detail"]
            assert body["settings"] == ["BHIV_LLM_PROVIDERS", "BHIV_LLM_MODELS"]

    def test_models_says_so(self, bare: ServiceProcess) -> None:
        body = client(bare).get("/models").json()
        assert (
            body["items"] == []
            and body["configured"] is False
            and "BHIV_LLM_MODELS" in body["hint"]
        )
        assert client(bare).get("/v1/models").json() == {"object": "list", "data": []}

    def test_a_model_registered_over_the_api_takes_queries(self, bare: ServiceProcess) -> None:
        with FakeOpenAI() as fake:
            root = admin(bare)
            provider = name("local")
            r = root.post(
                "/providers",
                json={"name": provider, "base_url": fake.base_url, "timeout_seconds": 5},
            )
            assert r.status_code == 201, r.text
            assert r.headers["Location"] == f"/providers/{provider}"
            assert r.json()["api_key_env"] is None and r.json()["source"] == "api"
            alias = name("llama")
            r = root.post(
                "/models",
                json={
                    "alias": alias,
                    "provider": provider,
                    "model": "llama-3-8b",
                    "context_window": 4096,
                },
            )
            assert r.status_code == 201, r.text
            fake.script("llama-3-8b", Reply("served locally"))
            r = ask(client(bare), unique(), model=alias)
            assert (
                r.status_code == 200
                and r.json()["choices"][0]["message"]["content"] == "served locally"
            )
            assert (
                "authorization" not in fake.calls_for("llama-3-8b")[0].headers
            )  # no key configured
            # /query without a model uses the only one there is.
            assert client(bare).post("/query", json={"prompt": unique()}).json()["model"] == alias
            assert root.get("/models").json()["configured"] is True
            # Leave the module's server as shipped for the other tests.
            assert root.delete(f"/models/{alias}").status_code == 204
            assert root.delete(f"/providers/{provider}").status_code == 204


class TestConfiguration:
    def test_configured_entries_are_listed_and_read_only(self, llm: ServiceProcess) -> None:
        root = admin(llm)
        models = {m["alias"]: m for m in root.get("/models", params={"limit": 500}).json()["items"]}
        primary = models["primary"]
        assert (
            primary["source"] == "config"
            and primary["provider"] == "fake"
            and primary["fallbacks"] == ["backup"]
        )
        assert (
            primary["input_price_per_1k"] == "0.500000"
            and primary["tokenizer_in_use"] == "cl100k_base"
        )
        body = assert_problem(
            root.patch("/models/primary", json={"enabled": False}),
            409,
            kind="managed-by-configuration",
        )
        assert body["setting"] == "BHIV_LLM_MODELS"
        assert_problem(root.delete("/providers/fake"), 409, kind="managed-by-configuration")

    def test_providers_show_the_key_variable_never_the_key(self, llm: ServiceProcess) -> None:
        p = admin(llm).get("/providers/fake").json()
        assert p["api_key_env"] == "BHIV_LLM_KEY_FAKE" and p["api_key_configured"] is True
        assert set(p) >= {
            "name",
            "kind",
            "base_url",
            "timeout_seconds",
            "max_retries",
            "enabled",
            "source",
        }

    def test_filters(self, llm: ServiceProcess) -> None:
        api = client(llm)
        only = api.get("/models", params={"provider": "fake-anthropic"}).json()["items"]
        assert [m["alias"] for m in only] == ["claude"]
        assert_problem(api.get("/models", params={"sort": "price"}), 422, "sort")


class TestManagement:
    def test_provider_and_model_lifecycle(self, llm: ServiceProcess, fake: FakeOpenAI) -> None:
        root = admin(llm)
        provider, alias = name("vllm"), name("mistral")
        assert (
            root.post(
                "/providers",
                json={
                    "name": provider,
                    "base_url": fake.base_url,
                    "api_key_env": "BHIV_LLM_KEY_FAKE",
                },
            ).status_code
            == 201
        )
        assert_problem(
            root.post("/providers", json={"name": provider, "base_url": fake.base_url}), 409, "name"
        )
        r = root.post(
            "/models",
            json={
                "alias": alias,
                "provider": provider,
                "model": "mistral-7b",
                "input_price_per_1k": "0.2",
                "output_price_per_1k": "0.4",
                "fallbacks": ["backup"],
            },
        )
        assert r.status_code == 201, r.text
        r = root.patch(
            f"/models/{alias}", json={"output_price_per_1k": "0.8", "context_window": 32768}
        )
        assert r.status_code == 200 and r.json()["output_price_per_1k"] == "0.800000"
        assert r.json()["context_window"] == 32768 and r.json()["fallbacks"] == ["backup"]

        fake.script("mistral-7b", Reply("one two"))
        r = ask(client(llm), unique(), model=alias)
        assert (
            r.status_code == 200 and r.json()["bhiv"]["cost_usd"] == "0.002200"
        )  # 3*0.2 + 2*0.8 per 1000

        assert root.patch(f"/models/{alias}", json={"enabled": False}).json()["available"] is False
        r = ask(client(llm), unique(), model=alias)  # disabled: its fallback answers
        assert r.status_code == 200 and r.json()["model"] == "backup"
        assert_problem(
            ask(client(llm), unique(), model=alias, fallbacks=[]), 503, kind="model-disabled"
        )

        assert_problem(root.delete(f"/providers/{provider}"), 409)  # still used by the model
        assert root.delete(f"/models/{alias}").status_code == 204
        assert root.delete(f"/providers/{provider}").status_code == 204
        assert_problem(root.get(f"/models/{alias}"), 404)

    def test_bad_definitions_are_422_naming_the_field(self, llm: ServiceProcess) -> None:
        root = admin(llm)
        # Only BHIV_LLM_KEY_* variables may hold keys: anything else could leak the service's own secrets.
        assert_problem(
            root.post(
                "/providers",
                json={
                    "name": name("p"),
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "BHIV_DATABASE_URL",
                },
            ),
            422,
            "api_key_env",
        )
        assert_problem(
            root.post("/providers", json={"name": name("p"), "base_url": "ftp://x"}),
            422,
            "base_url",
        )
        assert_problem(
            root.post(
                "/providers", json={"name": name("p"), "base_url": "http://h/v1", "kind": "cohere"}
            ),
            422,
            "kind",
        )
        assert_problem(
            root.post("/models", json={"alias": name("m"), "provider": "nope", "model": "x"}),
            422,
            "provider",
        )
        assert_problem(
            root.post(
                "/models",
                json={"alias": name("m"), "provider": "fake", "model": "x", "fallbacks": ["nope"]},
            ),
            422,
            "fallbacks.0",
        )
        assert_problem(
            root.post(
                "/models",
                json={
                    "alias": name("m"),
                    "provider": "fake",
                    "model": "x",
                    "input_price_per_1k": "-1",
                },
            ),
            422,
            "input_price_per_1k",
        )
        assert_problem(
            root.post("/models", json={"alias": "primary", "provider": "fake", "model": "x"}),
            409,
            "alias",
        )

    def test_a_model_others_fall_back_to_cannot_be_removed(self, llm: ServiceProcess) -> None:
        root = admin(llm)
        target, user = name("target"), name("user")
        assert (
            root.post(
                "/models", json={"alias": target, "provider": "fake", "model": "t"}
            ).status_code
            == 201
        )
        assert (
            root.post(
                "/models",
                json={"alias": user, "provider": "fake", "model": "u", "fallbacks": [target]},
            ).status_code
            == 201
        )
        body = assert_problem(root.delete(f"/models/{target}"), 409)
        assert body["models"] == [user]
        assert_problem(
            root.patch(f"/models/{user}", json={"fallbacks": [user]}), 422, "fallbacks.0"
        )
        assert_problem(root.patch(f"/models/{user}", json={"provider": None}), 422, "provider")

    def test_only_admins_manage_the_registry(self, llm: ServiceProcess) -> None:
        editor = client(llm)
        assert_problem(
            editor.post("/providers", json={"name": name("p"), "base_url": "http://h/v1"}), 403
        )
        assert_problem(
            editor.post("/models", json={"alias": name("m"), "provider": "fake", "model": "x"}), 403
        )
        assert (
            editor.get("/models").status_code == 200
            and client(llm, role="viewer").get("/providers").is_success
        )
