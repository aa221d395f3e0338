"""``processor dlq replay``: put dead letters back on the main stream, once fixed.

Each entry is XADDed to its source stream with the fields ingestion sent (the router's
added fields stripped, ``orig:<name>`` restored) and XDELed from the DLQ in one script
that runs only while the entry is still in the DLQ: every dead letter is replayed exactly
once. Two XADD-then-XDEL calls could only promise "at least once": a retry after a lost
reply, a crash between them, or two operators replaying at the same time re-published
the entry twice, and a record still poison then came back as two dead letters.
``--all`` stops at the DLQ's last entry as of the start, so entries that fail again and
come back to the DLQ while it runs are not replayed in a loop.
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
from redis.crc import key_slot

from processor import exit_codes
from processor.core.model import RawEntry
from processor.core.redis_io import RedisStreams
from processor.operator import letters, validate
from processor.operator.output import table
from processor.operator.session import ENV_HELP, Context, Report, Subparsers, UsageError
from processor.operator.shards import add_shard_option, dlq_of

PAGE = 100
SHOWN = 50


def register(actions: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = actions.add_parser(
        "replay",
        parents=[common],
        epilog=ENV_HELP,
        help="re-add dead letters to the main stream, then remove them from the DLQ",
        description="XADD each dead letter's original fields back to its source stream "
        "and XDEL it from the DLQ, in one atomic step: each dead letter is replayed exactly "
        "once, even when retried or run twice at the same time. Exit 1 when an entry is "
        "missing (or was replayed meanwhile by another run) or cannot be replayed (it has "
        "no original fields).",
    )
    parser.add_argument(
        "ids", nargs="*", type=validate.entry_id, metavar="ID", help="DLQ entry ids"
    )
    parser.add_argument("--all", action="store_true", help="replay every dead letter")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; change nothing"
    )
    add_shard_option(parser)
    parser.set_defaults(handler=run, prog=parser.prog)


@attrs.define
class _Outcome:
    replayed: list[dict[str, Any]] = attrs.field(factory=list)
    skipped: list[dict[str, str]] = attrs.field(factory=list)
    missing: list[str] = attrs.field(factory=list)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    if bool(args.ids) == bool(args.all):
        raise UsageError("give the DLQ entry ids to replay, or --all (not both)")
    dlq = dlq_of(ctx.settings, args.shard)
    streams = await ctx.redis()
    outcome = _Outcome()
    if args.ids:
        found = []
        for entry_id in dict.fromkeys(args.ids):
            entry = await streams.range(dlq, entry_id, entry_id, count=1)
            if entry:
                found += entry
            else:
                outcome.missing.append(entry_id)
        await _replay(ctx, streams, dlq, found, args.dry_run, outcome)
    else:
        end = await streams.newest_id(dlq)
        start = "-"
        while end is not None:
            page = await streams.range(dlq, start, end, count=PAGE)
            await _replay(ctx, streams, dlq, page, args.dry_run, outcome)
            if len(page) < PAGE:
                break
            start = f"({page[-1].entry_id}"
    data = {
        "dlq": dlq,
        "dry_run": args.dry_run,
        "replayed": len(outcome.replayed),
        "entries": outcome.replayed,
        "skipped": outcome.skipped,
        "missing": outcome.missing,
    }
    code = exit_codes.FAILED if outcome.skipped or outcome.missing else exit_codes.OK
    return Report(data, _text(data), code)


async def _replay(
    ctx: Context,
    streams: RedisStreams,
    dlq: str,
    entries: list[RawEntry],
    dry_run: bool,
    out: _Outcome,
) -> None:
    for entry in entries:
        target = letters.field(entry.fields, "source_stream") or ctx.settings.telemetry_stream
        original = letters.original_fields(entry.fields)
        if not original:
            out.skipped.append({"id": entry.entry_id, "reason": "no original fields to replay"})
            continue
        if target == dlq:
            out.skipped.append({"id": entry.entry_id, "reason": "its source stream is the DLQ"})
            continue
        if ctx.settings.cluster and key_slot(target.encode()) != key_slot(dlq.encode()):
            out.skipped.append(
                {"id": entry.entry_id, "reason": f"{target} is in another cluster slot than {dlq}"}
            )
            continue
        new_id = None
        if not dry_run:
            new_id = await streams.replay_letter(dlq, entry.entry_id, target, original)
            if new_id is None:
                out.missing.append(entry.entry_id)  # replayed or purged by someone else
                continue
        out.replayed.append({"id": entry.entry_id, "stream": target, "new_id": new_id})


def _text(data: dict[str, Any]) -> str:
    verb = "would replay" if data["dry_run"] else "replayed"
    lines = [f"{verb} {data['replayed']} dead letters from {data['dlq']}"]
    entries = data["entries"]
    if entries:
        rows = [[e["id"], e["stream"], e["new_id"]] for e in entries[:SHOWN]]
        lines.append(table(["DLQ ID", "TO STREAM", "NEW ID"], rows))
        if len(entries) > SHOWN:
            lines.append(f"... and {len(entries) - SHOWN} more")
    lines += [f"skipped {s['id']}: {s['reason']}" for s in data["skipped"]]
    lines += [f"not in the DLQ: {i}" for i in data["missing"]]
    return "\n".join(lines)
