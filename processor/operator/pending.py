"""``processor pending``: the oldest unacknowledged entries, who holds them, for how long.

Oldest by id, i.e. by when they were added: those are the ones furthest behind. A large
idle time means the owner stopped working on them (dead or stuck instance); a high
delivery count means they keep failing and will soon be dead-lettered.

With several shards every shard is read; counts are summed and the oldest entries of
all shards are merged (each entry then names its ``stream``).
"""

from __future__ import annotations

import argparse
from typing import Any

from processor.operator import validate
from processor.operator.groups import require_group
from processor.operator.output import duration, entry_time, table
from processor.operator.session import ENV_HELP, Context, Report, Subparsers, UsageError


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "pending",
        parents=[common],
        epilog=ENV_HELP,
        help="oldest pending entries with owner, idle time and deliveries",
        description="List the group's oldest pending (delivered, not acknowledged) entries "
        "with the consumer holding each, its idle time and delivery count.",
    )
    parser.add_argument(
        "--limit",
        type=validate.int_range(1, 10_000),
        default=20,
        metavar="N",
        help="entries to show (default 20)",
    )
    parser.add_argument(
        "--consumer", type=validate.name, metavar="NAME", help="only entries held by NAME"
    )
    parser.set_defaults(handler=run, prog=parser.prog)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    s = ctx.settings
    streams = await ctx.redis()
    sharded = len(s.telemetry_streams) > 1
    pending = 0
    by_consumer: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for shard in s.telemetry_streams:
        group = await require_group(streams, shard, s.consumer_group)
        pending += group["pending"]
        for c in await streams.consumers(shard, s.consumer_group):
            by_consumer[c["name"]] = by_consumer.get(c["name"], 0) + c["pending"]
        if args.consumer is not None and args.consumer not in by_consumer:
            continue  # checked once every shard's consumers are known
        found = await streams.pending_entries(shard, s.consumer_group, args.limit, args.consumer)
        rows += [{**r, "stream": shard} if sharded else r for r in found]
    if args.consumer is not None and args.consumer not in by_consumer:
        raise UsageError(
            f"no consumer {args.consumer!r} in group {s.consumer_group!r}"
            f" (consumers: {', '.join(by_consumer) or 'none'})"
        )
    rows = sorted(rows, key=lambda r: _id_key(r["id"]))[: args.limit]
    entries = [{**r, "added_at": entry_time(r["id"])} for r in rows]
    data: dict[str, Any] = {
        "stream": ",".join(s.telemetry_streams) if sharded else s.telemetry_stream,
        "group": s.consumer_group,
        "pending": pending,
        "by_consumer": by_consumer,
        "entries": entries,
    }
    return Report(data, _text(data, args.consumer))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(data: dict[str, Any], consumer: str | None) -> str:
    total = data["pending"] if consumer is None else data["by_consumer"][consumer]
    holder = f"group {data['group']}" if consumer is None else f"consumer {consumer}"
    head = f"{total} pending for {holder} on {data['stream']}"
    if not data["entries"]:
        return head
    rows = [
        [e["id"], e["consumer"], duration(e["idle_ms"]), e["deliveries"], e["added_at"]]
        for e in data["entries"]
    ]
    shown = f", oldest {len(rows)}:" if len(rows) < total else ":"
    return head + shown + "\n" + table(["ID", "CONSUMER", "IDLE", "DELIVERIES", "ADDED"], rows)
