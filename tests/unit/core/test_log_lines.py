"""Human log lines: the JSON record's fields as one short line, and the formatter and
format choice behind BHIV_LOG_FORMAT."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from bhiv.core.log_lines import render, to_ansi
from bhiv.core.logging import FIELDS, RENAMED, TextFormatter, uses_text

ACCESS = {
    "time": "2026-12-05T10:06:01.123456+00:00",
    "level": "INFO",
    "logger": "bhiv.access",
    "message": "GET /inventory/3 200",
    "service": "logistics",
    "request_id": "rid-1",
    "method": "GET",
    "path": "/inventory/3",
    "status": 200,
    "duration_ms": 4.24,
}


def plain(fields: Mapping[str, Any], **kw: bool) -> str:
    return to_ansi(render(fields, **kw), colour=False)


def test_an_access_record_is_the_request_and_its_outcome() -> None:
    line = plain(ACCESS)
    assert line.endswith(" INFO  logistics GET /inventory/3 200 4.2 ms  rid=rid-1")
    assert line[:12].count(":") == 2 and line[8] == "."  # HH:MM:SS.mmm, local time
    assert "GET /inventory/3 200 4.2 ms" in plain(ACCESS, service=False)
    assert "logistics" not in plain(ACCESS, service=False)


def test_other_records_name_their_logger_and_keep_their_traceback() -> None:
    fields = {
        "time": "not a time",
        "level": "ERROR",
        "logger": "bhiv.integrations.relay",
        "message": "delivery 12 failed",
        "trace_id": "4bf9",
        "exc_info": "Traceback (most recent call last):\nValueError: x",
    }
    first, *rest = plain(fields).splitlines()
    assert first == "not a time ERROR bhiv.integrations.relay: delivery 12 failed  trace=4bf9"
    assert rest == ["Traceback (most recent call last):", "ValueError: x"]


def test_colour_only_when_asked() -> None:
    assert "\x1b[" in to_ansi(render(ACCESS), colour=True)
    assert "\x1b[" not in to_ansi(render(ACCESS), colour=False)
    server_error = to_ansi(render({**ACCESS, "status": 503}), colour=True)
    assert "\x1b[1;31m503" in server_error


def test_the_text_formatter_writes_the_json_formatters_fields() -> None:
    record = logging.LogRecord("bhiv.access", logging.INFO, __file__, 1, "GET / 200", (), None)
    record.__dict__.update(request_id="r", method="GET", path="/", status=200, duration_ms=1.0)
    options = {"rename_fields": RENAMED, "timestamp": "time", "static_fields": {"service": "crm"}}
    text = TextFormatter(FIELDS, colour=False, **options).format(record)
    assert text.endswith(" INFO  crm GET / 200 1.0 ms  rid=r")
    assert not text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(text)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("log_format", "tty", "text"),
    [("auto", True, True), ("auto", False, False), ("json", True, False), ("text", False, True)],
)
def test_the_format_follows_the_setting_and_the_stream(
    log_format: str, tty: bool, text: bool
) -> None:
    assert uses_text(log_format, _Stream(tty)) is text  # type: ignore[arg-type]
