"""Finding our consumer group, shared by the commands that need it to exist."""

from __future__ import annotations

from typing import Any

from processor.core.redis_io import RedisStreams
from processor.operator.session import Failed


async def find_group(streams: RedisStreams, stream: str, group: str) -> dict[str, Any] | None:
    """The group's XINFO GROUPS row, or None when the stream or the group is missing."""
    if not await streams.exists(stream):
        return None
    return next((g for g in await streams.groups(stream) if g["name"] == group), None)


async def require_group(streams: RedisStreams, stream: str, group: str) -> dict[str, Any]:
    found = await find_group(streams, stream, group)
    if found is None:
        raise Failed(f"no group {group!r} on stream {stream!r}: no instance has started yet")
    return found
