"""Managing providers and model aliases. Reading needs ``read``; changing them
needs ``admin``. Entries declared in configuration are read-only here."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from bhiv.core import Page, PageParams, page_params, paginate, require, utcnow
from bhiv.core.crud import apply_patch, created, deleted, unique_as_conflict
from bhiv.core.errors import conflict, field_problem, not_found
from bhiv.core.routing import service_router
from bhiv.llm import registry
from bhiv.llm.models import LlmModel, Provider, Source
from bhiv.llm.routes.deps import SessionDep
from bhiv.llm.schemas import (
    ModelCreate,
    ModelList,
    ModelRead,
    ModelUpdate,
    ProviderCreate,
    ProviderRead,
    ProviderUpdate,
)
from bhiv.llm.settings import NAME_PATTERN
from bhiv.llm.tokens import counter

router = service_router()
Admin = [Depends(require("admin"))]
ProviderName = Annotated[str, Path(pattern=NAME_PATTERN, description="Provider name.")]
ModelAlias = Annotated[str, Path(pattern=NAME_PATTERN, description="Model alias.")]
provider_page = page_params(
    {"id": Provider.id, "name": Provider.name, "created_at": Provider.created_at}, "name"
)
model_page = page_params(
    {"id": LlmModel.id, "alias": LlmModel.alias, "created_at": LlmModel.created_at}, "alias"
)


def provider_read(p: Provider) -> ProviderRead:
    data = {
        c: getattr(p, c)
        for c in (
            "name",
            "kind",
            "base_url",
            "api_key_env",
            "timeout_seconds",
            "max_retries",
            "enabled",
            "created_at",
            "updated_at",
        )
    }
    return ProviderRead(
        **data,
        source=p.source.value,
        api_key_configured=bool(p.api_key_env and os.environ.get(p.api_key_env)),
    )


def model_read(m: LlmModel) -> ModelRead:
    return ModelRead(
        alias=m.alias,
        provider=m.provider.name,
        model=m.provider_model,
        input_price_per_1k=m.input_price_per_1k,
        output_price_per_1k=m.output_price_per_1k,
        context_window=m.context_window,
        max_output_tokens=m.max_output_tokens,
        tokenizer=m.tokenizer,
        tokenizer_in_use=counter(m.tokenizer).method,
        fallbacks=list(m.fallbacks or []),
        enabled=m.enabled,
        available=m.enabled and m.provider.enabled,
        source=m.source.value,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def _provider(session: Session, name: str) -> Provider:
    row = session.scalar(select(Provider).where(Provider.name == name))
    if row is None:
        raise not_found("Provider", name)
    return row


def _model(session: Session, alias: str) -> LlmModel:
    row = session.scalar(select(LlmModel).where(LlmModel.alias == alias))
    if row is None:
        raise not_found("Model", alias)
    return row


# --- providers ---------------------------------------------------------------------


@router.get(
    "/providers", response_model=Page[ProviderRead], tags=["providers"], summary="List providers"
)
def list_providers(
    session: SessionDep, params: Annotated[PageParams, Depends(provider_page)]
) -> Page[ProviderRead]:
    return paginate(session, select(Provider), params, provider_read)


@router.post(
    "/providers",
    response_model=ProviderRead,
    status_code=status.HTTP_201_CREATED,
    tags=["providers"],
    dependencies=Admin,
    summary="Register a provider",
    responses={409: {"description": "A provider with this name exists."}},
)
def create_provider(body: ProviderCreate, session: SessionDep, response: Response) -> ProviderRead:
    row = Provider(**body.model_dump(), source=Source.api)
    with unique_as_conflict(session, "providers", {"name": body.name}, "provider"):
        return created(session, response, row, provider_read, "/providers", key="name")


@router.get(
    "/providers/{name}", response_model=ProviderRead, tags=["providers"], summary="Get a provider"
)
def get_provider(name: ProviderName, session: SessionDep) -> ProviderRead:
    return provider_read(_provider(session, name))


@router.patch(
    "/providers/{name}",
    response_model=ProviderRead,
    tags=["providers"],
    dependencies=Admin,
    summary="Change a provider",
    responses={409: {"description": "Managed by configuration."}},
)
def update_provider(name: ProviderName, body: ProviderUpdate, session: SessionDep) -> ProviderRead:
    row = _provider(session, name)
    registry.refuse_if_configured(row, f"Provider {name}", "BHIV_LLM_PROVIDERS")
    apply_patch(row, body)
    session.commit()
    return provider_read(row)


@router.delete(
    "/providers/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["providers"],
    dependencies=Admin,
    summary="Remove a provider",
    responses={409: {"description": "Models use it, or configuration does."}},
)
def delete_provider(name: ProviderName, session: SessionDep) -> Response:
    row = _provider(session, name)
    registry.refuse_if_configured(row, f"Provider {name}", "BHIV_LLM_PROVIDERS")
    users = list(session.scalars(select(LlmModel.alias).where(LlmModel.provider_id == row.id)))
    if users:
        raise conflict(
            f"Provider {name} is used by models {', '.join(sorted(users))}; remove them first.",
            models=sorted(users),
        )
    return deleted(session, row)


# --- models --------------------------------------------------------------------------


@router.get(
    "/models",
    response_model=ModelList,
    tags=["models"],
    summary="The model registry",
    description="`configured` is false, and `hint` says what to set, while no model can take queries.",
)
def list_models(
    session: SessionDep,
    params: Annotated[PageParams, Depends(model_page)],
    enabled: Annotated[
        bool | None, Query(description="Only enabled (or disabled) aliases.")
    ] = None,
    provider: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this provider's.")
    ] = None,
) -> ModelList:
    stmt = select(LlmModel)
    if enabled is not None:
        stmt = stmt.where(LlmModel.enabled.is_(enabled))
    if provider is not None:
        stmt = stmt.join(Provider, LlmModel.provider_id == Provider.id).where(
            Provider.name == provider
        )
    page = paginate(session, stmt, params, model_read)
    configured = any(m.enabled and m.provider.enabled for m in session.scalars(select(LlmModel)))
    return ModelList(
        **page.model_dump(),
        configured=configured,
        hint=None if configured else registry.NO_MODEL_DETAIL,
    )


def _check_links(
    session: Session, alias: str, provider: str | None, fallbacks: list[str] | None
) -> int | None:
    """The provider's ID; 422 naming the field when the provider or a fallback does not exist."""
    provider_id = None
    if provider is not None:
        row = session.scalar(select(Provider).where(Provider.name == provider))
        if row is None:
            raise field_problem("provider", f"no provider is named '{provider}'")
        provider_id = row.id
    for i, fb in enumerate(fallbacks or []):
        if fb == alias:
            raise field_problem(f"fallbacks.{i}", "a model cannot fall back to itself")
        if session.scalar(select(LlmModel.id).where(LlmModel.alias == fb)) is None:
            raise field_problem(f"fallbacks.{i}", f"no model has alias '{fb}'")
    return provider_id


@router.post(
    "/models",
    response_model=ModelRead,
    status_code=status.HTTP_201_CREATED,
    tags=["models"],
    dependencies=Admin,
    summary="Register a model alias",
    responses={409: {"description": "The alias exists."}},
)
def create_model(body: ModelCreate, session: SessionDep, response: Response) -> ModelRead:
    provider_id = _check_links(session, body.alias, body.provider, body.fallbacks)
    values: dict[str, Any] = body.model_dump(exclude={"provider", "model"})
    row = LlmModel(**values, provider_id=provider_id, provider_model=body.model, source=Source.api)
    with unique_as_conflict(session, "llm_models", {"alias": body.alias}, "model"):
        return created(
            session,
            response,
            row,
            lambda r: model_read(_model(session, r.alias)),
            "/models",
            key="alias",
        )


@router.get(
    "/models/{alias}", response_model=ModelRead, tags=["models"], summary="Get a model alias"
)
def get_model(alias: ModelAlias, session: SessionDep) -> ModelRead:
    return model_read(_model(session, alias))


@router.patch(
    "/models/{alias}",
    response_model=ModelRead,
    tags=["models"],
    dependencies=Admin,
    summary="Change a model alias",
    responses={409: {"description": "Managed by configuration."}},
)
def update_model(alias: ModelAlias, body: ModelUpdate, session: SessionDep) -> ModelRead:
    row = _model(session, alias)
    registry.refuse_if_configured(row, f"Model {alias}", "BHIV_LLM_MODELS")
    changes = body.model_dump(exclude_unset=True)
    for name in ("provider", "model"):
        if name in changes and changes[name] is None:
            raise field_problem(name, "may not be null")
    provider_id = _check_links(
        session, alias, changes.pop("provider", None), changes.get("fallbacks")
    )
    if provider_id is not None:
        row.provider_id = provider_id
    if "model" in changes:
        row.provider_model = changes.pop("model")
    apply_patch(row, ModelUpdate(**changes))
    row.updated_at = utcnow()
    session.commit()
    session.expire(row)
    return model_read(_model(session, alias))


@router.delete(
    "/models/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["models"],
    dependencies=Admin,
    summary="Remove a model alias",
    responses={
        409: {"description": "Another model falls back to it, or configuration declares it."}
    },
)
def delete_model(alias: ModelAlias, session: SessionDep) -> Response:
    row = _model(session, alias)
    registry.refuse_if_configured(row, f"Model {alias}", "BHIV_LLM_MODELS")
    dependents = sorted(
        m.alias for m in session.scalars(select(LlmModel)) if alias in (m.fallbacks or [])
    )
    if dependents:
        raise conflict(
            f"Models {', '.join(dependents)} fall back to {alias}; change them first.",
            models=dependents,
        )
    return deleted(session, row)
