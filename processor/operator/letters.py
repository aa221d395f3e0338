"""Reading dead letters: the router's added fields versus what ingestion sent.

``core.dead_letters`` adds ``DLQ_FIELDS`` to each entry and renames an original field of
the same name to ``orig:<name>``; ``original_fields`` undoes exactly that, so a replayed
entry is byte for byte what ingestion published.
"""

from __future__ import annotations

from typing import Any

import orjson

from processor.core.dead_letters import DLQ_FIELDS

ADDED = frozenset(name.encode() for name in DLQ_FIELDS)
_ORIG = b"orig:"


def original_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        if key in ADDED:
            continue
        if key.startswith(_ORIG) and key[len(_ORIG) :] in ADDED:
            key = key[len(_ORIG) :]
        out[key] = value
    return out


def field(fields: dict[bytes, bytes], name: str) -> str | None:
    value = fields.get(name.encode())
    return None if value is None else value.decode("utf-8", "replace")


def payload(fields: dict[bytes, bytes]) -> Any | None:
    """The original payload parsed as JSON, or None when it is missing or not JSON."""
    raw = original_fields(fields).get(b"payload")
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def device_id(fields: dict[bytes, bytes]) -> str | None:
    obj = payload(fields)
    value = obj.get("device_id") if isinstance(obj, dict) else None
    return value[:40] if isinstance(value, str) else None
