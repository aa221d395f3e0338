"""The panic dump: what the process knew when it crashed, written before it exits.

A crash in a long-running daemon is investigated after the fact; the traceback alone
does not say which devices were in flight or how far behind the group was. The dump is
one JSON file per crash in ``PANIC_DUMP_DIR`` (small: counts and the newest fix per
device, capped), written synchronously because the event loop may be unusable.

Dumps end up attached to tickets, so connection URLs are written without their
passwords (in the user-info part or a ``password=`` query parameter).
"""

from __future__ import annotations

import os
import traceback
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import orjson

from processor.config import Settings
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates

# Enough devices to see a pattern without writing a huge file while crashing.
DUMP_DEVICES_MAX = 1000

# Every dump's file name starts so; ``waiting_dumps`` counts them.
DUMP_PREFIX = "processor-panic-"


def waiting_dumps(directory: str | Path) -> int:
    """Dumps in ``directory`` nobody has deleted yet; 0 when it does not exist.

    The panic counter is incremented just before the process exits, so no scrape sees
    it; the dumps a restarted instance finds are what an alert can see, until an operator
    reads and deletes them.
    """
    try:
        return sum(1 for _ in Path(directory).glob(f"{DUMP_PREFIX}*.json"))
    except OSError:
        return 0


def write_panic_dump(
    directory: str, exc: BaseException, settings: Settings, states: DeviceStates, health: Readiness
) -> Path:
    now = datetime.now(UTC)
    devices: dict[str, Any] = {}
    for device_id, state in islice(states.items(), DUMP_DEVICES_MAX):
        last = state.last_position
        devices[device_id] = {
            "last_ts": last.ts.isoformat() if last else None,
            "last_seen": state.last_seen.isoformat() if state.last_seen else None,
            "position_count_session": state.position_count_session,
        }
    dump = {
        "at": now.isoformat(),
        "pid": os.getpid(),
        "error": repr(exc),
        "traceback": traceback.format_exception(exc),
        "settings": {
            name: redact_url(value) if name.endswith("_url") and isinstance(value, str) else value
            for name, value in attrs.asdict(settings).items()
        },
        "readiness_problems": health.problems(),
        "device_states": len(states),
        "devices": devices,
    }
    path = Path(directory) / f"{DUMP_PREFIX}{now:%Y%m%dT%H%M%S}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(dump, default=str, option=orjson.OPT_INDENT_2))
    return path


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; anything unparsable is hidden whole."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "***"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    in_query = any(key.lower() == "password" for key, _ in pairs)
    if password is None and not in_query:
        return url
    netloc = parts.netloc
    if password is not None:
        user_info, _, host = netloc.rpartition("@")
        netloc = f"{user_info.partition(':')[0]}:***@{host}"
    query = parts.query
    if in_query:
        hidden = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
        query = urlencode(hidden, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
