"""Operator commands of the race domain: ``replay`` and ``backfill-derived``.

``replay`` recomputes an event's timing from stored positions, exactly as the live path's
recomputation does (same engine, same ``Replace`` write, the same locked transaction per
device: device lock, event locks, then ``timing_progress`` set), so running it twice, or
while the daemon runs, changes nothing the second time and never interleaves with a live
worker's pass on the same device. ``--from/--to`` narrow the fixes read: results are then
computed as if fixes outside did not exist (for investigating, not for routine use: a
running daemon times the device from all its stored fixes again at its next pass for it,
or, after a ``--to``, at its next catch-up). ``backfill-derived`` fills
``positions.derived`` for rows written before the IO mapping existed (or all rows with
``--all``, after a mapping change).

Both print a rich progress bar on stderr and a summary on stdout; exit 0 done, 1 the
event does not exist, 69 PostgreSQL unavailable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import trio
from rich.console import Console
from rich.progress import Progress

from processor import exit_codes
from processor.config import Settings
from processor.core.bridge import open_bridge
from processor.core.codec import stored_json
from processor.core.pg_io import PostgresUnavailable
from processor.domain.definition import EMPTY, RaceDefinition, build_definition
from processor.domain.live import LiveEngine
from processor.domain.store import DomainStore, TablesMissing

_RECORDS = "SELECT entry_id, geofence_id, crossed_at FROM timing_records WHERE entry_id = ANY(%b)"
_RESULTS = (
    "SELECT entry_id, stage_id, elapsed_ms, status, rank FROM stage_results"
    " WHERE entry_id = ANY(%b)"
)
_PAGE = """
SELECT device_id, ts, attributes FROM positions
WHERE (device_id, ts) > (%s, %s::timestamptz) {only_missing}
ORDER BY device_id, ts LIMIT %s
"""
_SET_DERIVED = """
UPDATE positions p SET derived = v.derived::jsonb
FROM unnest(%b::text[], %b::timestamptz[], %b::text[]) AS v(device_id, ts, derived)
WHERE p.device_id = v.device_id AND p.ts = v.ts
"""


def add_commands(subparsers: Any) -> None:
    """Register the subcommands on ``processor``'s ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "replay",
        help="recompute an event's timing from stored positions",
        description="Recompute timing records, zone events and stage results of an event "
        "(optionally one stage) from the positions table; idempotent.",
    )
    p.add_argument("--event", type=int, required=True, help="events.id")
    p.add_argument("--stage", type=int, help="only this stages.id")
    p.add_argument("--from", dest="since", type=_instant, help="ISO-8601 instant")
    p.add_argument("--to", dest="until", type=_instant, help="ISO-8601 instant")
    p.set_defaults(domain_command=replay_command)
    b = subparsers.add_parser(
        "backfill-derived",
        help="compute positions.derived for stored rows",
        description="Apply the IO mappings to stored rows whose derived column is empty "
        "(or to every row with --all), in batches.",
    )
    b.add_argument("--all", action="store_true", help="recompute rows that have a value too")
    b.add_argument("--batch", type=int, default=5000, help="rows per UPDATE (default 5000)")
    b.set_defaults(domain_command=backfill_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command ``add_commands`` registered (``args.domain_command``)."""
    code: int = trio.run(_run, args, settings)
    return code


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bridge():
        store = DomainStore(settings.postgres_url, application_name="processor-cli")
        try:
            code: int = await args.domain_command(store, args)
            return code
        except PostgresUnavailable as exc:
            print(f"processor: postgres unavailable: {exc}", file=sys.stderr)
            return exit_codes.UNAVAILABLE
        except TablesMissing as exc:
            print(f"processor: race tables missing: {exc}", file=sys.stderr)
            return exit_codes.FAILED
        finally:
            await store.aclose()


async def replay_command(store: DomainStore, args: argparse.Namespace) -> int:
    definition = build_definition(await store.load([args.event])).definition
    event = definition.events.get(args.event)
    if event is None:
        print(f"processor: no event {args.event}", file=sys.stderr)
        return exit_codes.FAILED
    if args.stage is not None and args.stage not in event.stages:
        print(f"processor: no stage {args.stage} in event {args.event}", file=sys.stderr)
        return exit_codes.FAILED
    since = _latest(args.since, event.starts_at)
    until = _earliest(args.until, event.ends_at)
    devices = sorted(definition.entries_by_device)
    entry_ids = [e.id for d in devices for e in definition.entries_of(d)]
    before = await _snapshot(store, entry_ids)
    engine = LiveEngine(definition)
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"event {args.event}", total=len(devices))
        for device_id in devices:
            force = {device_id: "replay"}
            await store.time(engine.plan([], force, window=(since, until), stage_id=args.stage))
            engine.forget(device_id)  # one device's track at a time in memory
            progress.advance(task)
    after = await _snapshot(store, entry_ids)
    for table in ("timing_records", "stage_results"):
        added, changed, removed = _diff(before[table], after[table])
        print(f"{table}: {added} added, {changed} changed, {removed} removed")
    return exit_codes.OK


async def _snapshot(store: DomainStore, entry_ids: list[int]) -> dict[str, dict[Any, Any]]:
    records = await store.fetch(_RECORDS, [entry_ids])
    results = await store.fetch(_RESULTS, [entry_ids])
    return {
        "timing_records": {(e, g): t for e, g, t in records},
        "stage_results": {(e, s): rest for e, s, *rest in results},
    }


def _diff(before: dict[Any, Any], after: dict[Any, Any]) -> tuple[int, int, int]:
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    changed = sum(1 for k in after.keys() & before.keys() if after[k] != before[k])
    return added, changed, removed


async def backfill_command(store: DomainStore, args: argparse.Namespace) -> int:
    try:
        definition: RaceDefinition = build_definition(await store.load()).definition
    except TablesMissing:
        definition = EMPTY  # no Directus tables: the default mappings for every device
    only_missing = "" if args.all else "AND derived IS NULL"
    [(total,)] = await store.fetch(f"SELECT count(*) FROM positions WHERE true {only_missing}", [])
    cursor: tuple[str, Any] = ("", "-infinity")
    updated = 0
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("positions.derived", total=total)
        while True:
            page = await store.fetch(
                _PAGE.format(only_missing=only_missing), [*cursor, max(1, args.batch)]
            )
            if not page:
                break
            cursor = (page[-1][0], page[-1][1])
            ids, stamps, values = [], [], []
            for device_id, ts, attributes in page:
                named = definition.mapping_of(device_id).apply(_raw(attributes or {}))
                ids.append(device_id)
                stamps.append(ts)
                values.append(None if named is None else stored_json(named).decode())
            updated += await store.execute(_SET_DERIVED, [ids, stamps, values])
            progress.advance(task, len(page))
    print(f"positions.derived: {updated} rows updated")
    return exit_codes.OK


def _raw(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored bag back to raw values (bytea text -> bytes), as the writer saw it."""
    return {
        k: bytes.fromhex(v[2:]) if isinstance(v, str) and v.startswith("\\x") else v
        for k, v in stored.items()
    }


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset")
    return moment


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(x for x in (a, b) if x is not None) if a or b else None


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(x for x in (a, b) if x is not None) if a or b else None
