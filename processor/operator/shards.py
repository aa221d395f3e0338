"""``--shard``: which shard's dead-letter stream a ``dlq`` command works on.

With several stream shards each has its own DLQ (``<shard>:dlq``, in the shard's cluster
slot), so ``dlq list | show | replay | purge`` take the shard by key or 0-based index;
without ``--shard`` they use the first shard's, which is the only one with one stream.
"""

from __future__ import annotations

import argparse

from processor.config import Settings
from processor.operator.session import UsageError


def add_shard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        metavar="KEY|N",
        help="the shard whose DLQ to use: a key of REDIS_TELEMETRY_STREAM or its 0-based "
        "index (default: the first)",
    )


def dlq_of(settings: Settings, shard: str | None) -> str:
    """The DLQ key of ``--shard`` (validated against ``REDIS_TELEMETRY_STREAM``)."""
    if shard is None:
        return settings.dlq_stream_key
    keys = settings.telemetry_streams
    if shard in keys:
        return settings.dlq_for(shard)
    if shard.isdigit() and int(shard) < len(keys):
        return settings.dlq_for(keys[int(shard)])
    raise UsageError(
        f"--shard {shard!r} is neither a key of REDIS_TELEMETRY_STREAM"
        f" nor an index 0-{len(keys) - 1}"
    )
