"""Field types that keep unstorable values out of the database."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError

from bhiv.core.fields import StorableText, UTCTimestamp


class Body(BaseModel):
    text: Annotated[str, StorableText] | None = None
    when: UTCTimestamp | None = None


def error_fields(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [e["loc"] for e in exc.errors()]


class TestStorableText:
    @pytest.mark.parametrize("value", ["plain", "tabs\tand\nnewlines", "ünïcödé ✓", ""])
    def test_accepts_ordinary_text(self, value: str) -> None:
        assert Body(text=value).text == value

    @pytest.mark.parametrize("value", ["nul\x00inside", "\x00", "lone \ud800 surrogate"])
    def test_refuses_what_a_database_cannot_store(self, value: str) -> None:
        with pytest.raises(ValidationError) as caught:
            Body(text=value)
        assert error_fields(caught.value) == [("text",)]


class TestUTCTimestamp:
    def test_converts_an_offset_to_utc(self) -> None:
        when = Body(when="2026-03-01T10:30:00+05:30").when
        assert when == dt.datetime(2026, 3, 1, 5, 0, tzinfo=dt.UTC) and when.tzinfo is dt.UTC

    @pytest.mark.parametrize(
        "value",
        ["2026-03-01T10:30:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "soon"],
    )
    def test_refuses_naive_and_unconvertible_times(self, value: str) -> None:
        with pytest.raises(ValidationError) as caught:
            Body(when=value)
        assert error_fields(caught.value) == [("when",)]
