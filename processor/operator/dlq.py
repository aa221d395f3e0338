"""``processor dlq list | show | replay | purge``: inspect and resolve dead letters.

``list`` and ``show`` read only. ``purge`` deletes for good, so it wants ``--yes`` (or
``--dry-run`` to count first). ``replay`` lives in its own module.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from processor.operator import letters, replay, validate
from processor.operator.output import json_value, pairs, table, text, truncate
from processor.operator.session import ENV_HELP, Context, Failed, Report, Subparsers, UsageError
from processor.operator.shards import add_shard_option, dlq_of

PAGE = 200


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="inspect, replay or purge the dead-letter stream",
        description="Dead letters: records that broke the contract or could not be stored, "
        "with why and where they came from (DLQ_STREAM, default <stream>:dlq).",
    )
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        parents=[common],
        epilog=ENV_HELP,
        help="oldest dead letters: id, time, kind, source id, device, error",
        description="List dead letters, oldest first.",
    )
    listing.add_argument(
        "--limit",
        type=validate.int_range(1, 100_000),
        default=20,
        metavar="N",
        help="entries to show (default 20)",
    )
    listing.add_argument(
        "--kind", metavar="KIND", help="only this error_kind (e.g. malformed_payload)"
    )
    add_shard_option(listing)
    listing.set_defaults(handler=run_list, prog=listing.prog)

    show = actions.add_parser(
        "show",
        parents=[common],
        epilog=ENV_HELP,
        help="every field of one dead letter",
        description="Print every field of one dead letter; the payload pretty-printed.",
    )
    show.add_argument("id", type=validate.entry_id, metavar="ID", help="the DLQ entry id")
    add_shard_option(show)
    show.set_defaults(handler=run_show, prog=show.prog)

    replay.register(actions, common)

    purge = actions.add_parser(
        "purge",
        parents=[common],
        epilog=ENV_HELP,
        help="delete dead letters older than a time or id (needs --yes)",
        description="Delete every dead letter added before --before (XTRIM MINID). "
        "Deleted entries are gone for good: --yes confirms, --dry-run only counts.",
    )
    purge.add_argument(
        "--before",
        required=True,
        type=validate.before,
        metavar="TIME|ID",
        help="an ISO-8601 time with offset (2026-05-12T09:00:00Z) or a DLQ entry id; "
        "entries with a lower id are deleted",
    )
    mode = purge.add_mutually_exclusive_group()
    mode.add_argument("--yes", action="store_true", help="really delete")
    mode.add_argument("--dry-run", action="store_true", help="only count what would go")
    add_shard_option(purge)
    purge.set_defaults(handler=run_purge, prog=purge.prog)


async def run_list(ctx: Context, args: argparse.Namespace) -> Report:
    dlq = dlq_of(ctx.settings, args.shard)
    streams = await ctx.redis()
    found: list[dict[str, Any]] = []
    start = "-"
    while len(found) < args.limit:
        page = await streams.range(dlq, start, "+", count=PAGE)
        for entry in page:
            f = entry.fields
            if args.kind is not None and letters.field(f, "error_kind") != args.kind:
                continue
            found.append(
                {
                    "id": entry.entry_id,
                    "failed_at": letters.field(f, "failed_at"),
                    "error_kind": letters.field(f, "error_kind"),
                    "source_stream": letters.field(f, "source_stream"),
                    "source_id": letters.field(f, "source_id"),
                    "device_id": letters.device_id(f),
                    "error": letters.field(f, "error"),
                }
            )
            if len(found) == args.limit:
                break
        if len(page) < PAGE:
            break
        start = f"({page[-1].entry_id}"
    data = {"dlq": dlq, "length": await streams.length(dlq), "entries": found}
    rows = [
        [
            e["id"],
            e["failed_at"],
            e["error_kind"],
            e["source_id"],
            e["device_id"],
            truncate(e["error"] or "", 60),
        ]
        for e in found
    ]
    head = f"{data['length']} dead letters in {dlq}"
    body = table(["ID", "FAILED AT", "KIND", "SOURCE ID", "DEVICE", "ERROR"], rows)
    return Report(data, head + (":\n" + body if rows else ""))


async def run_show(ctx: Context, args: argparse.Namespace) -> Report:
    dlq = dlq_of(ctx.settings, args.shard)
    streams = await ctx.redis()
    found = await streams.range(dlq, args.id, args.id, count=1)
    if not found:
        raise Failed(f"no entry {args.id} in {dlq}")
    fields = found[0].fields
    parsed = letters.payload(fields)
    data = {
        "dlq": dlq,
        "id": args.id,
        "fields": {text(k): json_value(v) for k, v in fields.items()},
        "payload": parsed,
    }
    rows = [(text(k), text(v)) for k, v in fields.items() if k != b"payload"]
    out = pairs([("id", args.id), *rows])
    raw = fields.get(b"payload")
    if parsed is not None:
        out += "\npayload:\n" + orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode()
    elif raw is not None:
        out += "\npayload (not JSON):\n" + text(raw)
    return Report(data, out)


async def run_purge(ctx: Context, args: argparse.Namespace) -> Report:
    if not (args.yes or args.dry_run):
        raise UsageError("purge deletes dead letters for good: add --yes, or --dry-run to count")
    dlq = dlq_of(ctx.settings, args.shard)
    streams = await ctx.redis()
    if args.dry_run:
        deleted = await _count_before(ctx, dlq, args.before)
    else:
        deleted = await streams.trim_before(dlq, args.before)
    data = {
        "dlq": dlq,
        "before": args.before,
        "dry_run": args.dry_run,
        "deleted": deleted,
        "length": await streams.length(dlq),
    }
    if args.dry_run:
        line = f"would delete {deleted} of {data['length']} dead letters"
    else:
        line = f"deleted {deleted} dead letters, {data['length']} left,"
    return Report(data, f"{line} in {dlq} (ids before {args.before})")


async def _count_before(ctx: Context, dlq: str, min_id: str) -> int:
    if min_id == "0-0":
        return 0
    streams = await ctx.redis()
    count, start = 0, "-"
    while True:
        page = await streams.range(dlq, start, f"({min_id}", count=1000)
        count += len(page)
        if len(page) < 1000:
            return count
        start = f"({page[-1].entry_id}"
