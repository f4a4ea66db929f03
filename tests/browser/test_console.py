"""The web console in a real browser: sign in, every module, the graph going live."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Platform, screenshot, sign_in


def test_sign_in_and_see_every_module(page: Any, platform: Platform) -> None:
    sign_in(page, platform)
    for name in ("integrations", "llm-query", "logistics", "crm", "agent-orchestration", "gateway"):
        page.locator(f'#platform-graph g.node[data-id="{name}"][data-state="up"]').wait_for()
    screenshot(page, "platform")
