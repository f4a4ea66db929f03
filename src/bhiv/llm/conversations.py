"""Conversations: stored history, and fitting it into a model's context window.

Each turn sends the system prompt, the summary of older turns (if any), as many
recent messages as fit, and the new prompt, leaving room for the answer. What
does not fit is dropped oldest first (``truncate``) or folded into the
conversation's running summary by the model itself (``summarize``). Messages are
stored as they were sent and shown: after input and output filtering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bhiv.core import not_found, utcnow
from bhiv.llm.models import Conversation, Message
from bhiv.llm.pipeline import Caller, Prepared, QueryPipeline
from bhiv.llm.tokens import Counter

SUMMARY_PREFIX = "Summary of the earlier conversation: "
# Share of the history budget kept for the running summary when summarising.
SUMMARY_SHARE = 4


@dataclass
class Fitted:
    messages: list[dict[str, Any]]
    history_messages: int
    dropped_messages: int
    summarized: bool
    summary: str | None
    summarized_through_id: int | None


def owned(session: Session, caller: Caller, conversation_id: int) -> Conversation:
    """The caller's conversation; someone else's is a 404, as if it did not exist."""
    conv = session.get(Conversation, conversation_id)
    if conv is None or conv.tenant != caller.tenant or conv.subject != caller.subject:
        raise not_found("Conversation", conversation_id)
    return conv


def unsummarized(session: Session, conv: Conversation) -> list[Message]:
    stmt = select(Message).where(Message.conversation_id == conv.id)
    if conv.summarized_through_id is not None:
        stmt = stmt.where(Message.id > conv.summarized_through_id)
    return list(session.scalars(stmt.order_by(Message.id)))


def message_count(session: Session, conversation_id: int) -> int:
    return (
        session.scalar(
            select(func.count(Message.id)).where(Message.conversation_id == conversation_id)
        )
        or 0
    )


def _summary_message(summary: str) -> dict[str, Any]:
    return {"role": "system", "content": SUMMARY_PREFIX + summary}


def _split(history: list[Message], budget: int) -> tuple[list[Message], list[Message]]:
    """(dropped, kept): the newest messages whose tokens fit in ``budget``."""
    kept: list[Message] = []
    used = 0
    for msg in reversed(history):
        cost = msg.tokens
        if used + cost > budget:
            break
        kept.append(msg)
        used += cost
    kept.reverse()
    return history[: len(history) - len(kept)], kept


def _clip(text: str, count: Counter, budget: int) -> str:
    """Cut a summary to about ``budget`` tokens (a model may ignore "be brief")."""
    while text and count.text(text) > budget:
        text = text[: int(len(text) * 0.8)]
    return text


async def fit(
    engine: QueryPipeline,
    prep: Prepared,
    conv: Conversation,
    history: list[Message],
    reserve_output: int,
) -> Fitted:
    """Put history between the system prompt(s) and the new prompt, within the window."""
    primary = prep.routes[0]
    count = prep.counter
    head, new = prep.messages[:-1], prep.messages[-1:]
    budget = primary.context_window - reserve_output - prep.prompt_tokens
    summary, through = conv.summary, conv.summarized_through_id
    summary_tokens = count.message(_summary_message(summary)) if summary else 0
    if summary and summary_tokens > budget:
        summary, summary_tokens = None, 0  # not even the summary fits: it is left out this turn

    dropped, kept = _split(history, max(0, budget - summary_tokens))
    summarized = False
    if dropped and conv.context_strategy == "summarize":
        summary_budget = max(64, budget // SUMMARY_SHARE)
        dropped, kept = _split(history, max(0, budget - summary_budget))
        transcript = "\n".join(
            ([f"(earlier summary) {summary}"] if summary else [])
            + [f"{m.role}: {m.content}" for m in dropped]
        )
        summary = _clip(
            await engine.summarize(prep.caller, prep.routes, transcript), count, summary_budget
        )
        through = dropped[-1].id
        summarized = True

    messages = [
        *head,
        *([_summary_message(summary)] if summary else []),
        *({"role": m.role, "content": m.content} for m in kept),
        *new,
    ]
    return Fitted(messages, len(kept), len(dropped), summarized, summary, through)


def append_turn(
    session: Session,
    conv: Conversation,
    prompt: str,
    prompt_tokens: int,
    answer: str,
    answer_tokens: int,
    alias: str,
    fitted: Fitted,
) -> None:
    """Store one exchange (and the new summary) in one transaction."""
    session.add(
        Message(
            conversation_id=conv.id,
            role="user",
            content=prompt,
            tokens=prompt_tokens,
            model_alias=alias,
        )
    )
    session.add(
        Message(
            conversation_id=conv.id,
            role="assistant",
            content=answer,
            tokens=answer_tokens,
            model_alias=alias,
        )
    )
    if fitted.summarized:
        conv.summary, conv.summarized_through_id = fitted.summary, fitted.summarized_through_id
    conv.updated_at = utcnow()
    session.add(conv)
    session.commit()
