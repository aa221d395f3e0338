"""``processor claim --from CONSUMER``: hand a dead instance's pending entries on, now.

The choice of mechanism is explained in ``DESCRIPTION`` (which is also the --help text):
reset the entries' idle time so the running instances' own claimers take them, rather
than park them with a live consumer that would not look at them until it restarts.
With several shards the consumer's entries are handed on in every shard it reads.
"""

from __future__ import annotations

import argparse
from typing import Any

from processor.core.redis_io import RedisStreams
from processor.operator import validate
from processor.operator.groups import find_group
from processor.operator.session import ENV_HELP, Context, Report, Subparsers, UsageError

DEFAULT_TARGET = "operator-claim"
PAGE = 500
DESCRIPTION = f"""\
Move every entry pending for CONSUMER (a dead or stuck instance) so that the running
instances process it now.

Entries are moved with XCLAIM ... IDLE <CLAIM_THRESHOLD_MS> JUSTID: their idle time is
set to the claim threshold, so the next claimer sweep of any running instance (at most
CLAIM_INTERVAL_MS away) takes them over and processes them, instead of waiting for them
to age past the threshold. Moving them to a live instance's consumer would not be enough
by itself: an instance re-reads its own pending entries only when it starts. JUSTID
leaves the delivery count unchanged, so the move does not push entries towards the
dead-letter stream.

--to only names the consumer holding the entries until a claimer takes them (default
{DEFAULT_TARGET}; the claimers delete it once it is empty and idle). CONSUMER itself is
deleted afterwards when it owns nothing (unless --keep-consumer).
"""


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "claim",
        parents=[common],
        epilog=ENV_HELP,
        help="move a dead instance's pending entries so live instances process them now",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        type=validate.name,
        metavar="CONSUMER",
        help="the consumer whose entries to move (see `processor status`)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        default=DEFAULT_TARGET,
        type=validate.name,
        metavar="NAME",
        help=f"consumer that holds the entries until a claimer takes them "
        f"(default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--min-idle-ms",
        type=validate.int_range(0, 2**62),
        default=0,
        metavar="N",
        help="only move entries idle at least N ms (default 0: all); a guard against "
        "taking work from an instance that is alive after all",
    )
    parser.add_argument(
        "--keep-consumer",
        action="store_true",
        help="do not delete CONSUMER afterwards (by default it is deleted once it owns nothing)",
    )
    parser.set_defaults(handler=run, prog=parser.prog)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    s = ctx.settings
    if args.source == args.target:
        raise UsageError("--from and --to name the same consumer")
    streams = await ctx.redis()
    names: dict[str, list[str]] = {}  # consumer -> the shards it is a consumer of
    for shard in s.telemetry_streams:
        if await find_group(streams, shard, s.consumer_group) is not None:
            for c in await streams.consumers(shard, s.consumer_group):
                names.setdefault(c["name"], []).append(shard)
    if args.source not in names:
        raise UsageError(
            f"no consumer {args.source!r} in group {s.consumer_group!r}"
            f" (consumers: {', '.join(names) or 'none'})"
        )
    seen = claimed = left = 0
    kept = args.keep_consumer
    for shard in names[args.source]:
        shard_seen, shard_claimed = await _claim_shard(ctx, streams, shard, args)
        seen, claimed = seen + shard_seen, claimed + shard_claimed
        consumers = await streams.consumers(shard, s.consumer_group)
        left += next((c["pending"] for c in consumers if c["name"] == args.source), 0)
        # The "owns nothing" check is in the deleting script: an instance alive after all
        # may have read entries since, and DELCONSUMER would drop them from the PEL.
        if not args.keep_consumer and not await streams.delete_consumer_if_idle(
            shard, s.consumer_group, args.source
        ):
            kept = True
    data: dict[str, Any] = {
        "from": args.source,
        "to": args.target,
        "claimed": claimed,
        "left": left,
        "gone": max(seen - claimed - left, 0),
        "consumer_deleted": not kept,
        "handover_idle_ms": s.claim_threshold_ms,
    }
    return Report(data, _text(data, args.min_idle_ms))


async def _claim_shard(
    ctx: Context, streams: RedisStreams, shard: str, args: argparse.Namespace
) -> tuple[int, int]:
    """Hand ``--from``'s entries on one shard to ``--to``: (entries seen, entries moved)."""
    s = ctx.settings
    seen = claimed = 0
    start = "-"
    while True:
        rows = await streams.pending_page(shard, s.consumer_group, start, PAGE, args.source)
        if not rows:
            return seen, claimed
        ids = [r["id"] for r in rows]
        moved = await streams.claim_ids(
            shard,
            s.consumer_group,
            args.target,
            ids,
            min_idle_ms=args.min_idle_ms,
            idle_ms=s.claim_threshold_ms,
        )
        seen += len(ids)
        claimed += len(moved)
        start = f"({ids[-1]}"


def _text(data: dict[str, Any], min_idle_ms: int) -> str:
    lines = [
        f"moved {data['claimed']} entries from {data['from']} to {data['to']}; the next "
        "claimer sweep of any running instance takes them over"
    ]
    if data["gone"]:
        lines.append(
            f"{data['gone']} pending entries were already deleted from the stream; "
            "Redis dropped them from the pending list"
        )
    if data["left"]:
        lines.append(
            f"{data['left']} entries stay with {data['from']}: idle less than {min_idle_ms} ms"
        )
    if data["consumer_deleted"]:
        lines.append(f"deleted consumer {data['from']}")
    elif data["left"]:
        lines.append(f"kept consumer {data['from']}: it still owns entries")
    return "\n".join(lines)
