"""Dependencies the routers share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from bhiv.core import Identity, current_identity, get_session
from bhiv.llm.pipeline import Caller, Engine
from bhiv.llm.settings import LlmSettings

SessionDep = Annotated[Session, Depends(get_session)]
IdentityDep = Annotated[Identity, Depends(current_identity)]


def engine(request: Request) -> Engine:
    return request.app.state.llm


def settings(request: Request) -> LlmSettings:
    return request.app.state.settings


def caller(identity: IdentityDep) -> Caller:
    return Caller.of(identity)


EngineDep = Annotated[Engine, Depends(engine)]
SettingsDep = Annotated[LlmSettings, Depends(settings)]
CallerDep = Annotated[Caller, Depends(caller)]


def is_admin(identity: Identity) -> bool:
    return "admin" in identity.permissions
