"""Argument types: each turns text into a value or raises a one-line reason.

They run while argparse parses, before any connection is opened, so a typo in an id or a
timestamp can never reach Redis (where ``XTRIM MINID`` with a wrong id deletes for good).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import datetime

from processor.core.control import valid_device_id

_ENTRY_ID = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII).fullmatch
_MS = re.compile(r"\d{1,20}", re.ASCII).fullmatch
_U64 = 2**64 - 1


def entry_id(text: str) -> str:
    """A complete stream entry id, ``<milliseconds>-<sequence>``."""
    match = _ENTRY_ID(text.strip())
    if match is None or int(match[1]) > _U64 or int(match[2]) > _U64:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a stream entry id (expected <ms>-<seq>, e.g. 1715506262000-0)"
        )
    return f"{int(match[1])}-{int(match[2])}"


def before(text: str) -> str:
    """``--before``: an entry id, or an ISO-8601 time with offset; returns the MINID."""
    value = text.strip()
    if _MS(value) and int(value) <= _U64:
        return f"{int(value)}-0"
    if _ENTRY_ID(value):
        return entry_id(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an entry id nor an ISO-8601 time with an offset"
            " (e.g. 2026-05-12T09:00:00Z)"
        )
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is before 1970")
    return f"{ms}-0"


def device_id(text: str) -> str:
    if not valid_device_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device id (1-20 of [0-9A-Za-z_-], e.g. an IMEI)"
        )
    return text


def name(text: str) -> str:
    """A consumer name: what Redis accepts and the daemon's config allows."""
    if not text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a consumer name (empty or spaces)")
    return text


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer {lo}-{hi}")
        return value

    return parse
