"""Token counting: the real tokenizer where installed, the estimate otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bhiv.llm import tokens
from bhiv.llm.tokens import Counter, counter


def test_cl100k_counts_real_tokens_without_a_download() -> None:
    c = counter("cl100k_base")
    assert c.method == "cl100k_base"
    assert c.text("hello world") == 2
    assert c.text("") == 0
    assert c.text("<|endoftext|>") > 1  # special tokens in user text are counted as text


# Run in a fresh interpreter, so no encoding is cached yet: every socket and
# tiktoken's downloader fail, no cache directory is configured and the default
# one (under TMPDIR) is empty, so the count can only come from the shipped file.
_OFFLINE_COUNT = """
import os, socket, sys
import tiktoken.load

def no_network(*args, **kwargs):
    raise OSError("network disabled in this test")

socket.socket.connect = no_network
tiktoken.load.read_file = no_network
from bhiv.llm.tokens import counter
c = counter("cl100k_base")
assert c.method == "cl100k_base", c.method
assert c.text("hello world") == 2
assert "TIKTOKEN_CACHE_DIR" not in os.environ
print("ok")
"""


def test_cl100k_loads_from_the_shipped_file_offline(tmp_path: Path) -> None:
    unset = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["TMPDIR"] = str(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", _OFFLINE_COUNT], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    assert not list(tmp_path.iterdir())  # nothing was written to tiktoken's default cache


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
    assert (
        tokens.message_text(
            {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        )
        == "ab"
    )
    assert tokens.message_text({"content": None}) == ""


def test_degrades_to_the_estimate_when_the_tokenizer_is_missing(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(tokens, "_encoding", lambda: None)
    assert counter("cl100k_base").method == "estimate"
