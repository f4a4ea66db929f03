"""The service's own query endpoint and conversations with their history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.core import Page, PageParams, page_params, paginate
from bhiv.core.crud import apply_patch, created, deleted
from bhiv.core.errors import field_problem
from bhiv.core.routing import service_router
from bhiv.llm import conversations
from bhiv.llm.models import Conversation, LlmModel, Message
from bhiv.llm.pipeline import Answer, ChatRequest
from bhiv.llm.routes.chat import PROBLEMS
from bhiv.llm.routes.deps import CallerDep, EngineDep, SessionDep, SettingsDep
from bhiv.llm.schemas import (
    ContextReport,
    ConversationCreate,
    ConversationRead,
    ConversationUpdate,
    MessageRead,
    QueryRequest,
    QueryResponse,
)

router = service_router(tags=["query"])
ConversationId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Conversation ID.")]
conversation_page = page_params(
    {
        "id": Conversation.id,
        "created_at": Conversation.created_at,
        "updated_at": Conversation.updated_at,
    },
    default_sort="-updated_at",
)
message_page = page_params({"id": Message.id}, default_sort="id")


def _response(
    answer: Answer, conversation_id: int | None, context: ContextReport | None
) -> dict[str, Any]:
    ext = answer.extension()
    body = QueryResponse(
        id=answer.id,
        answer=answer.content,
        finish_reason=answer.finish_reason,
        model=answer.route.alias,
        provider=ext["provider"],
        provider_model=ext["provider_model"],
        usage={
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.total_tokens,
            "source": answer.usage_source,
        },
        tokenizer=answer.tokenizer,
        cost_usd=answer.cost_usd,
        cache_hit=answer.cache_hit,
        attempts=answer.attempts,
        safety=ext["safety"],
        conversation_id=conversation_id,
        context=context,
    )
    return body.model_dump(mode="json")


@router.post(
    "/query",
    response_model=QueryResponse,
    summary="Ask a question, optionally within a conversation",
    description="The same pipeline as /v1/chat/completions. With `conversation_id` the conversation's history "
    "is sent (fitted to the model's context window) and the exchange is stored; such queries are never cached.",
    responses=PROBLEMS,
)
async def query(
    body: QueryRequest, engine: EngineDep, caller: CallerDep, settings: SettingsDep
) -> Any:
    conv = history = None
    system = body.system
    alias = body.model
    if body.conversation_id is not None:

        def load(session: Session) -> tuple[Conversation, list[Message]]:
            c = conversations.owned(session, caller, body.conversation_id)  # type: ignore[arg-type]
            return c, conversations.unsummarized(session, c)

        conv, history = await engine.db_call(load)
        system = system or conv.system_prompt
        alias = alias or conv.model_alias

    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": body.prompt}
    ]
    params = {
        k: v
        for k, v in {
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop,
        }.items()
        if v is not None
    }
    request = ChatRequest(
        endpoint="query",
        model=alias,
        messages=messages,
        params=params,
        fallbacks=body.fallbacks,
        use_cache=body.cache and conv is None,
    )
    prep = await engine.prepare(caller, request)

    context = fitted = None
    if conv is not None:
        primary = prep.routes[0]
        reserve = body.max_tokens or primary.max_output_tokens or settings.llm_reserve_output_tokens
        fitted = await conversations.fit(engine, prep, conv, history or [], reserve)
        prep.messages = fitted.messages
        prep.prompt_tokens = prep.counter.messages(fitted.messages)
        context = ContextReport(
            history_messages=fitted.history_messages,
            dropped_messages=fitted.dropped_messages,
            summarized=fitted.summarized,
        )

    answer = await engine.complete(prep)

    if conv is not None and fitted is not None:
        user_msg = prep.messages[-1]
        answer_msg = {"role": "assistant", "content": answer.content}

        def store(session: Session) -> None:
            c = session.get(Conversation, conv.id)
            if c is None:
                return  # deleted while the model was answering: nothing to append to
            conversations.append_turn(
                session,
                c,
                user_msg["content"],
                prep.counter.message(user_msg),
                answer.content,
                prep.counter.message(answer_msg),
                answer.route.alias,
                fitted,
            )

        await engine.db_call(store)
    return JSONResponse(
        _response(answer, conv.id if conv else None, context),
        headers={**prep.rate_headers, **answer.headers()},
    )


def _read(session: Session, conv: Conversation) -> ConversationRead:
    return ConversationRead(
        id=conv.id,
        title=conv.title,
        model=conv.model_alias,
        system_prompt=conv.system_prompt,
        context_strategy=conv.context_strategy,
        summary=conv.summary,
        message_count=conversations.message_count(session, conv.id),
        created_at=conv.created_at,
        updated_at=conv.updated_at,
    )


def _check_alias(session: Session, alias: str | None) -> None:
    if (
        alias is not None
        and session.scalar(select(LlmModel.id).where(LlmModel.alias == alias)) is None
    ):
        raise field_problem("model", f"no model has alias '{alias}' (GET /models lists them)")


@router.post(
    "/conversations",
    response_model=ConversationRead,
    status_code=status.HTTP_201_CREATED,
    summary="Start a conversation",
)
def create_conversation(
    body: ConversationCreate,
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    response: Response,
) -> ConversationRead:
    _check_alias(session, body.model)
    conv = Conversation(
        tenant=caller.tenant,
        subject=caller.subject,
        title=body.title,
        model_alias=body.model,
        system_prompt=body.system_prompt,
        context_strategy=body.context_strategy or settings.llm_context_strategy,
    )
    return created(session, response, conv, lambda c: _read(session, c), "/conversations")


@router.get(
    "/conversations", response_model=Page[ConversationRead], summary="The caller's conversations"
)
def list_conversations(
    session: SessionDep,
    caller: CallerDep,
    params: Annotated[PageParams, Depends(conversation_page)],
) -> Page[ConversationRead]:
    stmt = select(Conversation).where(
        Conversation.tenant == caller.tenant, Conversation.subject == caller.subject
    )
    return paginate(session, stmt, params, lambda c: _read(session, c))


@router.get(
    "/conversations/{conversation_id}",
    response_model=ConversationRead,
    summary="Get a conversation",
)
def get_conversation(
    conversation_id: ConversationId, session: SessionDep, caller: CallerDep
) -> ConversationRead:
    return _read(session, conversations.owned(session, caller, conversation_id))


@router.patch(
    "/conversations/{conversation_id}",
    response_model=ConversationRead,
    summary="Change a conversation's title, model, system prompt or strategy",
)
def update_conversation(
    conversation_id: ConversationId,
    body: ConversationUpdate,
    session: SessionDep,
    caller: CallerDep,
) -> ConversationRead:
    conv = conversations.owned(session, caller, conversation_id)
    changes = body.model_dump(exclude_unset=True)
    if "model" in changes:
        _check_alias(session, changes["model"])
        conv.model_alias = changes.pop("model")
    apply_patch(conv, ConversationUpdate(**changes))
    session.commit()
    return _read(session, conv)


@router.delete(
    "/conversations/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a conversation and its history",
)
def delete_conversation(
    conversation_id: ConversationId, session: SessionDep, caller: CallerDep
) -> Response:
    return deleted(session, conversations.owned(session, caller, conversation_id))


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=Page[MessageRead],
    summary="A conversation's history, oldest first",
)
def list_messages(
    conversation_id: ConversationId,
    session: SessionDep,
    caller: CallerDep,
    params: Annotated[PageParams, Depends(message_page)],
) -> Page[MessageRead]:
    conversations.owned(session, caller, conversation_id)
    stmt = select(Message).where(Message.conversation_id == conversation_id)
    return paginate(session, stmt, params, MessageRead.model_validate)
