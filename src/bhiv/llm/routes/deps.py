"""Dependencies the routers share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bhiv.core import Identity, current_identity
from bhiv.core.db import SessionDep as SessionDep
from bhiv.llm.pipeline import Caller, QueryPipeline
from bhiv.llm.settings import LlmSettings

IdentityDep = Annotated[Identity, Depends(current_identity)]


def engine(request: Request) -> QueryPipeline:
    llm: QueryPipeline = request.app.state.llm
    return llm


def settings(request: Request) -> LlmSettings:
    settings: LlmSettings = request.app.state.settings
    return settings


def caller(identity: IdentityDep) -> Caller:
    return Caller.of(identity)


EngineDep = Annotated[QueryPipeline, Depends(engine)]
SettingsDep = Annotated[LlmSettings, Depends(settings)]
CallerDep = Annotated[Caller, Depends(caller)]


def is_admin(identity: Identity) -> bool:
    return "admin" in identity.permissions
