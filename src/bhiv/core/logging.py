"""Structured JSON logs with the request ID (and, when tracing is on, the trace ID) on every line."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from bhiv.core import tracing
from bhiv.core.context import request_id_var


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.trace_id = tracing.current_trace_id()
        # uvicorn attaches an ANSI-coloured copy of its message; JSON has no use for it.
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (ours, uvicorn's, SQLAlchemy's) to one JSON stream on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter(
            "%(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            static_fields={"service": service},
        )
    )
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
