"""Log lines a person reads: one short line per record, for a terminal.

Containers and files get JSON (bhiv.core.logging); ``bhiv serve`` on a terminal and
``bhiv up`` (which reads its children's JSON) print these instead. Both start from
the same fields, the JSON record's, so the two formats never say different things:

    10:06:01.123 INFO  GET /inventory/3 200 4.2 ms  rid=9f2c… trace=4bf9…
    10:06:02.001 WARN  bhiv.integrations.relay: delivery 12 failed  rid=-
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.text import Text

LEVEL_STYLES = {
    "DEBUG": ("DEBUG", "dim"),
    "INFO": ("INFO ", "green"),
    "WARNING": ("WARN ", "yellow"),
    "ERROR": ("ERROR", "bold red"),
    "CRITICAL": ("CRIT ", "bold white on red"),
}


def _clock(value: Any) -> str:
    """HH:MM:SS.mmm in local time from the record's timestamp: a datetime (a record
    being formatted) or its ISO text (a JSON line read back); other text as it is."""
    stamp = value
    if isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(stamp, dt.datetime):
        return "--:--:--.---"
    return stamp.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _status_style(status: int) -> str:
    if status >= 500:
        return "bold red"
    if status >= 400:
        return "yellow"
    if status >= 300:
        return "cyan"
    return "green"


def render(fields: Mapping[str, Any], *, service: bool = True) -> Text:
    """One record as one line (plus its traceback, if it has one). ``service``: name
    the service (``bhiv up`` already prefixes each child's lines with it)."""
    line = Text(no_wrap=False)
    line.append(_clock(fields.get("time")), style="dim")
    label, style = LEVEL_STYLES.get(str(fields.get("level")), (str(fields.get("level")), ""))
    line.append(f" {label} ", style=style)
    if service and fields.get("service"):
        line.append(f"{fields['service']} ", style="bold")
    status = fields.get("status")
    if isinstance(status, int) and "method" in fields:
        # An access line: the request and its outcome, not "GET /x 200" twice.
        line.append(f"{fields['method']} {fields.get('path', '')} ")
        line.append(str(status), style=_status_style(status))
        duration = fields.get("duration_ms")
        if isinstance(duration, int | float):
            line.append(f" {duration:.1f} ms", style="dim")
    else:
        if fields.get("logger"):
            line.append(f"{fields['logger']}: ", style="dim")
        line.append(str(fields.get("message", "")))
    ids = [
        f"{short}={fields[key]}"
        for key, short in (("request_id", "rid"), ("trace_id", "trace"))
        if fields.get(key)
    ]
    if ids:
        line.append("  " + " ".join(ids), style="dim")
    for key in ("exc_info", "stack_info"):
        if fields.get(key):
            line.append("\n" + str(fields[key]).rstrip(), style="red" if key == "exc_info" else "")
    return line


def to_ansi(text: Text, *, colour: bool) -> str:
    """``text`` as a string for a stream: with ANSI colours, or plain."""
    console = Console(
        force_terminal=colour, no_color=not colour, color_system="standard" if colour else None,
        width=100_000, highlight=False,
    )  # fmt: skip
    with console.capture() as captured:
        console.print(text, end="", soft_wrap=True)
    return captured.get()
