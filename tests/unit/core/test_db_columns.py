"""Shared column building blocks: string enums and timestamps."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator

import pytest
from sqlalchemy import Integer, create_engine, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bhiv.core.db import Timestamps, string_enum


class Colour(enum.StrEnum):
    light_blue = "light-blue"
    red = "red"


class Base(DeclarativeBase):
    pass


class Thing(Timestamps, Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    colour: Mapped[Colour] = mapped_column(string_enum(Colour, "colour"))


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_string_enum_stores_values_and_reads_members(session: Session) -> None:
    session.add(Thing(id=1, colour=Colour.light_blue))
    session.commit()
    assert session.scalar(text("SELECT colour FROM things")) == "light-blue"
    session.expire_all()
    thing = session.get(Thing, 1)
    assert thing is not None and thing.colour is Colour.light_blue


def test_string_enum_refuses_unknown_strings(session: Session) -> None:
    session.add(Thing(id=2, colour="green"))
    with pytest.raises(StatementError):
        session.flush()


def test_timestamps_default_to_now_in_utc(session: Session) -> None:
    before = dt.datetime.now(dt.UTC)
    thing = Thing(id=3, colour=Colour.red)
    session.add(thing)
    session.flush()
    assert before <= thing.created_at <= dt.datetime.now(dt.UTC)
    assert thing.updated_at.tzinfo is not None
