"""Which shard (stream key) a device's records go to: the contract with ingestion.

Per-device order holds only if every record of a device lands in the same stream, so
ingestion and the processor (and the simulator) must agree on one function:

    shard = streams[crc32(device_id as UTF-8) % len(streams)]

CRC-32 (zlib, ISO-HDLC, the one in every language's standard library) is stable across
processes and machines, unlike Python's salted ``hash()``. ``streams`` is the list in
``REDIS_TELEMETRY_STREAM`` order; changing the number of shards re-maps devices, so do
it with ingestion paused and the old shards drained (see README "Scaling out").
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence


def shard_index(device_id: str, shards: int) -> int:
    """The shard number (0-based) of a device among ``shards`` shards."""
    if shards < 1:
        raise ValueError("at least one shard is needed")
    return zlib.crc32(device_id.encode()) % shards


def shard_for(device_id: str, streams: Sequence[str]) -> str:
    """The stream key a device's records must be XADDed to."""
    return streams[shard_index(device_id, len(streams))]
