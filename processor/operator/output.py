"""Rendering: aligned plain-text tables for people, one JSON document for scripts.

Stream fields are bytes and may be anything ingestion sent, so the one rule for showing
them lives here: UTF-8 text as is, anything else as base64 (JSON) or escaped (text).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; ``None`` shows as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def pairs(rows: Sequence[tuple[str, object]]) -> str:
    """``name  value`` lines with the values aligned."""
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name.ljust(width)}  {'-' if v is None else v}" for name, v in rows)


def duration(ms: int | None) -> str:
    """A short human duration: ``850ms``, ``12.5s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def text(value: bytes) -> str:
    """A field value for a terminal: never raises, never prints raw control bytes."""
    return value.decode("utf-8", "backslashreplace")


def json_value(value: bytes) -> str | dict[str, str]:
    """A field value for JSON: the text when it is UTF-8, else ``{"base64": ...}``."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def entry_time(entry_id: str) -> str:
    """When an entry was added, from the milliseconds in its id (ISO-8601 UTC)."""
    ms = int(entry_id.partition("-")[0])
    return iso(datetime.fromtimestamp(ms / 1000, UTC))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dump_json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str) + b"\n"
