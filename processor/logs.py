"""JSON-lines logging on stdout: ISO-8601 UTC timestamps, the level as a string.

The logger is built and passed down (``structlog.wrap_logger``), not configured globally,
so tests and embedded uses can have loggers of their own.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _text(value: object) -> str:
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def _render(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """One JSON line, whatever the event holds: a log call must never raise.

    orjson is the fast path; it refuses integers beyond 64 bits (a ``__bigint`` IO value
    in a logged field), which the stdlib encoder writes exactly; anything neither can
    encode (a circular value, say) is written field by field as text.
    """
    try:
        return orjson.dumps(event, default=_text, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        pass
    try:
        return json.dumps(event, default=_text, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps({str(k): _text(v) for k, v in event.items()}, ensure_ascii=False)


def make_logger(
    level: str = "info", file: TextIO | None = None
) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(file or sys.stdout),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
    )
    return logger
