"""Server -> client frames as JSON text, and the checks on what a client names.

Frames are encoded once and the same ``str`` is handed to every subscribed client:
with hundreds of clients per event, per-client encoding would dominate the fan-out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from processor.core.codec import exact_json
from processor.core.model import Position

# Event ids become part of a Directus URL path (``/items/events/<id>``): only plain
# identifiers pass, so a client can never steer the request elsewhere.
_EVENT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}").fullmatch


def iso(moment: datetime) -> str:
    """JavaScript's ``Date.toJSON()`` form (UTC, milliseconds, ``Z``), what the SPA parses."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def event_id_of(value: object) -> str | None:
    """The event id a client sent (string or integer) as the canonical string, or None."""
    if type(value) is int and value >= 0:
        return str(value)
    if type(value) is str and _EVENT_ID(value) is not None:
        return value
    return None


def _default(value: object) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(frame: Mapping[str, Any]) -> str:
    # exact_json: an IO value or named attribute may be an integer beyond 64 bits.
    return exact_json(frame, _default).decode()


def position_body(
    position: Position, entry_id: object, attributes: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The contract's ``<position>`` object."""
    return {
        "device_id": position.device_id,
        "entry_id": entry_id,
        "ts": iso(position.ts),
        "lat": position.latitude,
        "lon": position.longitude,
        "speed": position.speed,
        "heading": position.heading,
        "alt": position.altitude,
        "sats": position.satellites,
        "attrs": dict(attributes or {}),
    }


def position_frame(event_id: str, body: Mapping[str, Any]) -> str:
    return dumps({"type": "position", "event_id": event_id, **body})


def snapshot_frame(event_id: str, bodies: Sequence[Mapping[str, Any]], req: object) -> str:
    return dumps({"type": "snapshot", "event_id": event_id, "positions": list(bodies), "req": req})


def hello_frame(user_id: str, now: datetime) -> str:
    return dumps({"type": "hello", "user_id": user_id, "server_time": iso(now)})


def error_frame(code: str, message: str, req: object = None, event_id: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, "req": req}
    if event_id is not None:
        frame["event_id"] = event_id
    return dumps(frame)


def pong_frame(req: object) -> str:
    return dumps({"type": "pong", "req": req})


def unsubscribed_frame(event_id: str) -> str:
    return dumps({"type": "unsubscribed", "event_id": event_id})


def timing_frame(
    event_id: str, stage_id: int, entry_id: int, device_id: str, kind: str, crossed_at: datetime
) -> str:
    return dumps(
        {
            "type": "timing",
            "event_id": event_id,
            "stage_id": stage_id,
            "entry_id": entry_id,
            "device_id": device_id,
            "kind": kind,
            "crossed_at": iso(crossed_at),
        }
    )
