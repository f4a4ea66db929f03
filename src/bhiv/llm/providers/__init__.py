"""Provider adapters by kind."""

from __future__ import annotations

from bhiv.llm.providers.anthropic import AnthropicAdapter
from bhiv.llm.providers.base import Adapter
from bhiv.llm.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter()}
