"""``processor status``: the numbers to look at first when something seems stuck.

Stream length, every group on the stream (a second group is how a forgotten consumer
shows up), our group's consumers with their pending count and idle time (a dead
instance is a consumer with pending entries and a growing idle time), and the DLQ size.

With several shards the sections above describe the first shard, and a ``shards`` table
adds every shard's length, pending, lag and DLQ length with their totals.
"""

from __future__ import annotations

import argparse
from typing import Any

from processor.core.redis_io import RedisStreams
from processor.operator.groups import find_group
from processor.operator.output import duration, pairs, table
from processor.operator.session import ENV_HELP, Context, Report, Subparsers


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "status",
        parents=[common],
        epilog=ENV_HELP,
        help="stream, groups, consumers, pending, lag and DLQ size",
        description="Show the stream length, each consumer group (consumers, pending, "
        "lag, last delivered id), the consumers of REDIS_CONSUMER_GROUP (pending, idle) "
        "and the dead-letter stream's length.",
    )
    parser.set_defaults(handler=run, prog=parser.prog)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    s = ctx.settings
    streams = await ctx.redis()
    exists = await streams.exists(s.telemetry_stream)
    length = await streams.length(s.telemetry_stream)
    groups = await streams.groups(s.telemetry_stream) if exists else []
    ours = next((g for g in groups if g["name"] == s.consumer_group), None)
    consumers = await streams.consumers(s.telemetry_stream, s.consumer_group) if ours else []
    dlq_length = await streams.length(s.dlq_stream_key)
    data: dict[str, Any] = {
        "stream": {"key": s.telemetry_stream, "exists": exists, "length": length},
        "groups": groups,
        "group": {
            "name": s.consumer_group,
            "exists": ours is not None,
            "pending": ours["pending"] if ours else 0,
            "lag": ours["lag"] if ours else None,
            "consumers": consumers,
        },
        "dlq": {"key": s.dlq_stream_key, "length": dlq_length},
    }
    if len(s.telemetry_streams) > 1:
        data["shards"] = await _shards(ctx, streams)
    return Report(data, _text(data, groups))


async def _shards(ctx: Context, streams: RedisStreams) -> dict[str, Any]:
    s = ctx.settings
    rows = []
    for shard in s.telemetry_streams:
        group = await find_group(streams, shard, s.consumer_group)
        rows.append(
            {
                "key": shard,
                "length": await streams.length(shard),
                "pending": group["pending"] if group else 0,
                "lag": group["lag"] if group else None,
                "dlq_length": await streams.length(s.dlq_for(shard)),
            }
        )
    lags = [r["lag"] for r in rows]
    return {
        "count": len(rows),
        "length": sum(r["length"] for r in rows),
        "pending": sum(r["pending"] for r in rows),
        "lag": None if None in lags else sum(lags),
        "dlq_length": sum(r["dlq_length"] for r in rows),
        "streams": rows,
    }


def _text(data: dict[str, Any], groups: list[dict[str, Any]]) -> str:
    stream, dlq, group = data["stream"], data["dlq"], data["group"]
    parts = [
        pairs(
            [
                ("stream", f"{stream['key']}  ({stream['length']} entries)"),
                ("dlq", f"{dlq['key']}  ({dlq['length']} entries)"),
            ]
        )
    ]
    if groups:
        parts.append(
            table(
                ["GROUP", "CONSUMERS", "PENDING", "LAG", "LAST DELIVERED"],
                [
                    [g["name"], g["consumers"], g["pending"], g["lag"], g["last_delivered_id"]]
                    for g in groups
                ],
            )
        )
    if not group["exists"]:
        parts.append(f"group {group['name']!r} does not exist yet: no instance has started")
    elif group["consumers"]:
        rows = [[c["name"], c["pending"], duration(c["idle_ms"])] for c in group["consumers"]]
        parts.append(
            f"consumers of {group['name']}:\n" + table(["CONSUMER", "PENDING", "IDLE"], rows)
        )
    else:
        parts.append(f"group {group['name']!r} has no consumers")
    if "shards" in data:
        shards = data["shards"]
        rows = [
            [r["key"], r["length"], r["pending"], r["lag"], r["dlq_length"]]
            for r in shards["streams"]
        ]
        rows.append(
            ["total", shards["length"], shards["pending"], shards["lag"], shards["dlq_length"]]
        )
        parts.append(
            f"{shards['count']} shards:\n"
            + table(["SHARD", "LENGTH", "PENDING", "LAG", "DLQ"], rows)
        )
    return "\n\n".join(parts)
