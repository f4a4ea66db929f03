"""Logs with the request ID (and, when tracing is on, the trace ID) on every line: JSON
for containers, files and pipes; short human lines (bhiv.core.log_lines) on a terminal.
``BHIV_LOG_FORMAT`` chooses: ``auto`` (the default: text on a terminal, else JSON),
``json`` or ``text``."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from bhiv.core import tracing
from bhiv.core.context import request_id_var
from bhiv.core.log_lines import render, to_ansi
from bhiv.core.settings import LogFormat

FIELDS = "%(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s"
RENAMED = {"levelname": "level", "name": "logger"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.trace_id = tracing.current_trace_id()
        # uvicorn attaches an ANSI-coloured copy of its message; JSON has no use for it.
        record.__dict__.pop("color_message", None)
        return True


class TextFormatter(JsonFormatter):
    """The JSON formatter's fields, written as one human line instead of JSON."""

    def __init__(self, *args: Any, colour: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.colour = colour

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        return to_ansi(render(log_data), colour=self.colour)


def uses_text(log_format: LogFormat, stream: Any) -> bool:
    return log_format == "text" or (log_format == "auto" and stream.isatty())


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "auto") -> None:
    """Route every logger (ours, uvicorn's, SQLAlchemy's) to one stream on stderr."""
    stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    options: dict[str, Any] = {
        "rename_fields": RENAMED,
        "timestamp": "time",
        "static_fields": {"service": service},
    }
    if uses_text(log_format, stream):
        handler.setFormatter(TextFormatter(FIELDS, colour=stream.isatty(), **options))
    else:
        handler.setFormatter(JsonFormatter(FIELDS, **options))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers; ours replace them. Its access log is
    # off: the framework writes one access line per request with the request ID.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
