"""Token counting: OpenAI's cl100k_base tokenizer where it is installed, an
estimate otherwise, and every count says which one produced it.

tiktoken normally downloads its ranks at run time, which a service with no
internet access cannot do. This package ships the cl100k_base ranks file in
``tiktoken_cache/``, named as tiktoken's own cache names it (the SHA-1 of the
download URL), and points ``TIKTOKEN_CACHE_DIR`` there while the encoding
loads: tiktoken then reads the file instead of downloading it and still checks
it against OpenAI's published SHA-256. cl100k_base
is exact for the GPT-3.5/GPT-4 family and a close approximation for other
models; a provider's own ``usage`` figures, when it reports them, always win.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("bhiv.llm.tokens")

Method = Literal["cl100k_base", "estimate"]

# OpenAI's accounting for chat formatting: each message costs its content plus
# a few framing tokens, and every reply is primed with three more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
CHARS_PER_TOKEN = 4


# tiktoken's cache directory, holding the one file it looks up for cl100k_base.
TIKTOKEN_CACHE_DIR = os.path.join(os.path.dirname(__file__), "tiktoken_cache")
_env_lock = threading.Lock()


@functools.cache
def _encoding() -> Any | None:
    try:
        import tiktoken

        # tiktoken reads its cache directory from the environment only; it is
        # set for the duration of the load and the caller's value restored.
        with _env_lock:
            previous = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = TIKTOKEN_CACHE_DIR
            try:
                return tiktoken.get_encoding("cl100k_base")
            finally:
                if previous is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = previous
    except Exception as exc:  # missing package, missing data file, hash mismatch
        log.warning(
            "cl100k_base tokenizer unavailable (%s); token counts are estimates", type(exc).__name__
        )
        return None


@dataclass(frozen=True)
class Counter:
    """Counts tokens with one method; ``method`` is what responses report."""

    method: Method

    def text(self, text: str) -> int:
        if not text:
            return 0
        if self.method == "cl100k_base":
            enc = _encoding()
            if enc is not None:
                return len(enc.encode(text, disallowed_special=()))
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def message(self, message: Mapping[str, Any]) -> int:
        n = (
            TOKENS_PER_MESSAGE
            + self.text(str(message.get("role", "")))
            + self.text(message_text(message))
        )
        if message.get("name"):
            n += TOKENS_PER_NAME + self.text(str(message["name"]))
        return n

    def messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        return sum(self.message(m) for m in messages) + REPLY_PRIMING


def counter(preferred: str) -> Counter:
    """The counter for a model's configured tokenizer, degraded to the estimate if unavailable."""
    if preferred == "cl100k_base" and _encoding() is not None:
        return Counter("cl100k_base")
    return Counter("estimate")


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text: a plain string, or the text parts of a content list."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
