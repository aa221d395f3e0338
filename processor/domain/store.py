"""PostgreSQL for the race domain: definition reads, stored fixes, result writes.

Every statement goes through ``processor.core.bridge`` on a connection of the domain's
own (timing writes must neither queue behind nor disturb the writer's batches). Errors
are split like the writer's: ``PostgresUnavailable`` (retry later) and ``RowsRejected``
(the data is wrong); anything else is a bug and propagates.

Result writes and why they converge (see ``results``):
- ``Update``: upserts; a timing record only ever moves to an *earlier* crossing, so a
  stale increment racing a recomputation cannot undo it.
- ``Replace``: upserts that overwrite, then deletes of the entries' rows not in the set.
Each write and the re-ranking of the stages it touched is one transaction, which first
takes a transaction-level advisory lock per event it touches (``RESULTS_LOCK``, in event
order). Several instances, and the replay tool, write results of one stage at once; without
the lock each one's re-rank reads the stage without the others' uncommitted rows and two
entries can both end up rank 1. With it, a re-rank always sees every earlier write.

Timing passes (``time``): the live worker's and the replay tool's unit of work is one
transaction that first locks every device it times (``TIMING_LOCK``, in key order), then
the events (as above: devices before events everywhere, so no lock cycles), reads
``timing_progress``, lets the pass decide (``live.TimingPass``), reads the stored fixes of
the devices it recomputes (or, for those it rebuilds, their stored rows, the fix at their
progress and the stored fixes after it: five batched reads for all of them), writes the
results and the new progress (with the definition's fingerprint). Under the device lock
a pass sees every fix committed before it and every earlier pass's progress, so two
instances timing one device take turns instead of interleaving; a pass that fails leaves
the old progress behind, and the next one recomputes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import msgspec
import psycopg
import psycopg.errors
from psycopg.rows import dict_row

from processor.core.pg_session import PgSession, RowsRejected, describe
from processor.domain.definition import RawRows
from processor.domain.live import Mark, StoredRows
from processor.domain.results import (
    Replace,
    StageResult,
    TimingRecord,
    Write,
    ZoneVisit,
    events_of,
)
from processor.domain.timing import EPOCH, Fix

if TYPE_CHECKING:
    from processor.domain.live import Rebuild, TimingPass, Window

T = TypeVar("T")

# A definition load or a stage recomputation reads at most a few MB; this long is a stall.
TIMEOUT_S = 60.0


class TablesMissing(Exception):
    """The Directus tables are not in this database (development without the fixture)."""


# Parameters go in binary (``%b``): psycopg formats a text-format array element by element
# in Python (~6.8 µs per element for text[] + timestamptz[], measured), a binary one in C
# (~0.9 µs); a pass sends arrays of every device, fix and row it touches.
_RECORD_COLUMNS = ", ".join(TimingRecord.__struct_fields__)


def _insert_rows(table: str, row: type[msgspec.Struct], types: Sequence[str]) -> str:
    """``INSERT`` of rows given as one array per column (``_columns``), unnested server
    side: one statement for all of a pass's rows of a kind. ``executemany`` (a statement
    per row, pipelined) cost ~7 µs of the worker's CPU per row, the arrays ~1.7 (5,000
    timing records, measured ad hoc). The row type's fields, in order, are the columns.

    One statement must not propose a key twice (ON CONFLICT DO UPDATE refuses to touch a
    row twice), so ``_write`` first keeps the row a statement per row would have left.
    """
    fields = row.__struct_fields__
    assert len(types) == len(fields), (table, fields, types)
    arrays = ", ".join(f"%b::{t}[]" for t in types)
    return f"INSERT INTO {table} ({', '.join(fields)}) SELECT * FROM unnest({arrays})\n"


def _columns(rows: Sequence[msgspec.Struct]) -> list[list[Any]]:
    """Rows as one list per field: the arrays ``_insert_rows`` statements unnest."""
    return [list(column) for column in zip(*map(msgspec.structs.astuple, rows), strict=True)]


_INSERT_RECORD = (
    _insert_rows(
        "timing_records",
        TimingRecord,
        ("int", "int", "int", "text", "int", "text", "timestamptz", "timestamptz"),
    )
    + """ON CONFLICT (entry_id, geofence_id) DO UPDATE SET
    event_id = EXCLUDED.event_id, stage_id = EXCLUDED.stage_id, kind = EXCLUDED.kind,
    crossed_at = EXCLUDED.crossed_at, source_ts = EXCLUDED.source_ts
"""
)
UPSERT_RECORD_EARLIER = _INSERT_RECORD + "WHERE EXCLUDED.crossed_at < timing_records.crossed_at"
UPSERT_RECORD_EXACT = (
    _INSERT_RECORD + "WHERE (timing_records.crossed_at, timing_records.source_ts,"
    " timing_records.kind, timing_records.stage_id)"
    " IS DISTINCT FROM (EXCLUDED.crossed_at, EXCLUDED.source_ts, EXCLUDED.kind,"
    " EXCLUDED.stage_id)"
)
UPSERT_VISIT = (
    _insert_rows(
        "zone_events", ZoneVisit, ("int", "int", "int", "timestamptz", "timestamptz", "float8")
    )
    + """ON CONFLICT (entry_id, geofence_id, entered_at) DO UPDATE SET
    exited_at = EXCLUDED.exited_at, max_speed_kmh = EXCLUDED.max_speed_kmh
WHERE (zone_events.exited_at, zone_events.max_speed_kmh)
    IS DISTINCT FROM (EXCLUDED.exited_at, EXCLUDED.max_speed_kmh)
"""
)
UPSERT_RESULT = (
    _insert_rows(
        "stage_results",
        StageResult,
        ("int", "int", "int", "timestamptz", "timestamptz", "int8", "int", "int", "text"),
    )
    + """ON CONFLICT (stage_id, entry_id) DO UPDATE SET
    event_id = EXCLUDED.event_id, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, elapsed_ms = EXCLUDED.elapsed_ms,
    checkpoints_passed = EXCLUDED.checkpoints_passed,
    checkpoints_total = EXCLUDED.checkpoints_total, status = EXCLUDED.status, updated_at = now()
WHERE (stage_results.started_at, stage_results.finished_at, stage_results.elapsed_ms,
       stage_results.checkpoints_passed, stage_results.checkpoints_total, stage_results.status)
    IS DISTINCT FROM (EXCLUDED.started_at, EXCLUDED.finished_at, EXCLUDED.elapsed_ms,
       EXCLUDED.checkpoints_passed, EXCLUDED.checkpoints_total, EXCLUDED.status)
"""
)
DELETE_STALE_RECORDS = """
DELETE FROM timing_records t WHERE t.entry_id = ANY(%(entries)b)
  AND (%(stages)b::int[] IS NULL OR t.stage_id = ANY(%(stages)b)) AND NOT EXISTS (
    SELECT 1 FROM unnest(%(a)b::int[], %(b)b::int[]) AS k(e, g)
    WHERE k.e = t.entry_id AND k.g = t.geofence_id)
"""
DELETE_STALE_VISITS = """
DELETE FROM zone_events z WHERE z.entry_id = ANY(%(entries)b) AND NOT EXISTS (
    SELECT 1 FROM unnest(%(a)b::int[], %(b)b::int[], %(c)b::timestamptz[]) AS k(e, g, t)
    WHERE k.e = z.entry_id AND k.g = z.geofence_id AND k.t = z.entered_at)
"""
DELETE_STALE_RESULTS = """
DELETE FROM stage_results r WHERE r.entry_id = ANY(%(entries)b)
  AND (%(stages)b::int[] IS NULL OR r.stage_id = ANY(%(stages)b)) AND NOT EXISTS (
    SELECT 1 FROM unnest(%(a)b::int[], %(b)b::int[]) AS k(s, e)
    WHERE k.s = r.stage_id AND k.e = r.entry_id)
RETURNING r.stage_id
"""
# The advisory-lock namespace (first key) of result writes; the second key is the event id.
RESULTS_LOCK = 0x52414345  # "RACE"
LOCK_EVENT = "SELECT pg_advisory_xact_lock(%b::int4, %b::int4)"
# Finished entries ranked by elapsed time (ties share a rank); running ones have none.
RERANK = """
WITH ranked AS (
    SELECT id, CASE WHEN status = 'finished' AND elapsed_ms IS NOT NULL THEN
        rank() OVER (PARTITION BY stage_id, status = 'finished' AND elapsed_ms IS NOT NULL
                     ORDER BY elapsed_ms)
    END AS rank
    FROM stage_results WHERE stage_id = ANY(%b)
)
UPDATE stage_results s SET rank = ranked.rank
FROM ranked WHERE s.id = ranked.id AND s.rank IS DISTINCT FROM ranked.rank
"""
# The advisory-lock namespace of timing passes; the second key is hashtext(device_id).
TIMING_LOCK = 0x54494D45  # "TIME"
LOCK_DEVICE = "SELECT pg_advisory_xact_lock(%b::int4, hashtext(%b))"
# The keys of several devices, in the order they are locked: by key, not by id, so two
# devices whose ids hash alike (one lock) cannot make two passes take locks in a cycle.
# All of a pass's locks in one statement each (a statement per device cost a round trip
# per device per pass). ``OFFSET 0`` keeps the sorted subquery from being flattened, so
# the locks are taken in its order; were they not, PostgreSQL would detect the cycle and
# the pass would be retried like any deadlock.
LOCK_DEVICES = """
SELECT pg_advisory_xact_lock(%b::int4, k) FROM (
    SELECT DISTINCT hashtext(d) AS k FROM unnest(%b::text[]) AS d ORDER BY 1 OFFSET 0) AS s
"""
LOCK_EVENTS = """
SELECT pg_advisory_xact_lock(%b::int4, e) FROM (
    SELECT DISTINCT e FROM unnest(%b::int4[]) AS e ORDER BY 1 OFFSET 0) AS s
"""
PROGRESS = """
SELECT device_id, updated_at, last_ts, definition, timed
FROM timing_progress WHERE device_id = ANY(%b)
"""
# Per probe: the device's valid stored fixes in (after, upto] inside [since, until].
COUNT_BETWEEN = """
SELECT k.device_id, (
    SELECT count(*) FROM positions p
    WHERE p.device_id = k.device_id AND p.fix_valid
      AND p.ts > coalesce(k.after, '-infinity') AND p.ts <= k.upto
      AND p.ts >= coalesce(k.since, '-infinity') AND p.ts <= coalesce(k.until, 'infinity'))
FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
            %b::timestamptz[]) AS k(device_id, after, upto, since, until)
"""
SET_PROGRESS = """
INSERT INTO timing_progress (device_id, last_ts, updated_at, definition, timed)
SELECT k.device_id, k.last_ts, clock_timestamp(), %b::text, k.timed
FROM unnest(%b::text[], %b::timestamptz[], %b::bigint[]) AS k(device_id, last_ts, timed)
ON CONFLICT (device_id) DO UPDATE SET last_ts = EXCLUDED.last_ts,
    updated_at = EXCLUDED.updated_at, definition = EXCLUDED.definition, timed = EXCLUDED.timed
RETURNING device_id, updated_at
"""
# A recomputation that found no fix: the row (if any) keeps last_ts, its token changes,
# and its rows no longer follow from the fix at last_ts (no rebuild from them).
TOUCH_PROGRESS = """
UPDATE timing_progress SET updated_at = clock_timestamp(), definition = NULL, timed = NULL
WHERE device_id = ANY(%b)
RETURNING device_id, updated_at
"""
# A rebuild's reads (``live.Rebuild``): per device the fix at its progress, then the rows
# of its entries, then the valid fixes after its progress up to the newest new one.
MARKED_FIXES = """
SELECT p.device_id, p.ts, p.longitude, p.latitude, p.speed
FROM unnest(%b::text[], %b::timestamptz[]) AS k(device_id, ts)
JOIN positions p ON p.device_id = k.device_id AND p.ts = k.ts AND p.fix_valid
"""
ENTRY_RECORDS = f"SELECT {_RECORD_COLUMNS} FROM timing_records WHERE entry_id = ANY(%b)"
ENTRY_VISITS = """
SELECT event_id, entry_id, geofence_id, entered_at, exited_at, max_speed_kmh
FROM zone_events WHERE entry_id = ANY(%b)
"""
ENTRY_RESULTS = """
SELECT event_id, stage_id, entry_id, started_at, finished_at, elapsed_ms, checkpoints_passed,
    checkpoints_total, status
FROM stage_results WHERE entry_id = ANY(%b)
"""
FIXES_AFTER = """
SELECT p.device_id, p.ts, p.longitude, p.latitude, p.speed
FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
            %b::timestamptz[]) AS k(device_id, after, upto, since, until)
JOIN positions p ON p.device_id = k.device_id AND p.fix_valid
  AND p.ts > k.after AND p.ts <= coalesce(k.upto, 'infinity')
  AND p.ts >= coalesce(k.since, '-infinity') AND p.ts <= coalesce(k.until, 'infinity')
ORDER BY p.device_id, p.ts
"""
# Devices with a valid stored fix in their window newer than their progress (or no row):
# fixes nobody timed (a shutdown or crash dropped them, or the device had no entry yet).
BEHIND = """
SELECT k.device_id
FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[]) AS k(device_id, since, until)
LEFT JOIN timing_progress t ON t.device_id = k.device_id
WHERE EXISTS (
    SELECT 1 FROM positions p
    WHERE p.device_id = k.device_id AND p.fix_valid
      AND p.ts > coalesce(t.last_ts, '-infinity')
      AND p.ts >= coalesce(k.since, '-infinity') AND p.ts <= coalesce(k.until, 'infinity'))
ORDER BY k.device_id
"""
FIXES = """
SELECT ts, longitude, latitude, speed FROM positions
WHERE device_id = %b AND fix_valid
  AND ts >= coalesce(%b::timestamptz, '-infinity') AND ts <= coalesce(%b::timestamptz, 'infinity')
ORDER BY ts
"""


@attrs.define
class DomainStore:
    """One PostgreSQL connection of the race domain (see ``core.pg_session.PgSession``)."""

    url: str
    application_name: str = "processor-domain"
    session: PgSession = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.session = PgSession(self.url, self.application_name, TIMEOUT_S)

    async def connect(self) -> None:
        await self.session.connect()

    async def aclose(self) -> None:
        await self.session.aclose()

    async def load(self, event_ids: Sequence[int] | None = None) -> RawRows:
        """Directus rows: live events (or ``event_ids``), their parts, all devices/mappings."""
        return await self._run(_load, list(event_ids) if event_ids is not None else None)

    async def ensure_natural_keys(self) -> None:
        """Create the unique keys the idempotent result writes (``ON CONFLICT``) rely on.

        Directus owns these tables, but a Directus schema snapshot cannot express a
        multi-column UNIQUE key, so a Directus-created database lacks them and every
        result upsert would fail. Creating them is idempotent and cheap once they exist.
        """
        try:
            await self._run(_execute_all, NATURAL_KEYS)
        except psycopg.ProgrammingError as exc:  # e.g. no right to create an index
            raise RowsRejected(describe(exc)) from exc

    async def fixes(
        self, device_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[Fix]:
        """A device's valid stored fixes in ``[since, until]``, in time order."""
        return _fixes(await self._run(_fetch, FIXES, (device_id, since, until)))

    async def apply(self, writes: Sequence[Write]) -> None:
        """Write results in one transaction and re-rank the stages they touch."""
        if writes:
            await self._run(_apply, list(writes))

    async def time(self, work: TimingPass) -> None:
        """Run one timing pass as one locked transaction (see the module docstring)."""
        if work.devices:
            await self._run(_time, work)

    async def behind(self, windows: Sequence[tuple[str, Window]]) -> list[str]:
        """Of these devices (and their windows), those with stored fixes nobody timed."""
        if not windows:
            return []
        rows = await self._run(
            _fetch,
            BEHIND,
            (
                [d for d, _ in windows],
                [w[0] for _, w in windows],
                [w[1] for _, w in windows],
            ),
        )
        return [d for (d,) in rows]

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read for the operator commands (replay summaries, backfill pages)."""
        return await self._run(_fetch, query, params)

    async def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return await self._run(_execute, query, params)

    async def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self.session.run(fn, *args)
        except psycopg.errors.UndefinedTable as exc:
            raise TablesMissing(describe(exc)) from exc


_US = timedelta(microseconds=1)


async def _fetch(
    conn: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def _execute(conn: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any]) -> int:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        return cur.rowcount


async def _load(conn: psycopg.AsyncConnection[Any], event_ids: list[int] | None) -> RawRows:
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # One snapshot for all six reads, so entries never refer to a stage read later.
        await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if event_ids is None:
            await cur.execute("SELECT * FROM events WHERE status = 'live' ORDER BY id")
        else:
            await cur.execute("SELECT * FROM events WHERE id = ANY(%b) ORDER BY id", [event_ids])
        events = await cur.fetchall()
        ids = [e["id"] for e in events]
        await cur.execute("SELECT id, imei, model FROM devices ORDER BY id")
        devices = await cur.fetchall()
        await cur.execute(
            "SELECT e.id, e.event_id, d.imei, e.number FROM entries e"
            " JOIN devices d ON d.id = e.device_id WHERE e.event_id = ANY(%b) ORDER BY e.id",
            [ids],
        )
        entries = await cur.fetchall()
        await cur.execute("SELECT * FROM stages WHERE event_id = ANY(%b) ORDER BY id", [ids])
        stages = await cur.fetchall()
        await cur.execute("SELECT * FROM geofences WHERE event_id = ANY(%b) ORDER BY id", [ids])
        geofences = await cur.fetchall()
        await cur.execute("SELECT * FROM io_mappings ORDER BY id")
        io_mappings = await cur.fetchall()
    return RawRows(
        events=events,
        devices=devices,
        entries=entries,
        stages=stages,
        geofences=geofences,
        io_mappings=io_mappings,
    )


def _fixes(rows: Sequence[tuple[Any, ...]]) -> list[Fix]:
    return [Fix(ts, (ts - EPOCH) // _US, lon, lat, speed or 0.0) for ts, lon, lat, speed in rows]


async def _time(conn: psycopg.AsyncConnection[Any], work: TimingPass) -> None:
    devices = work.devices
    events = work.events
    async with conn.transaction(), conn.cursor() as cur:
        # Devices first, then events: one order everywhere, so no lock cycles.
        await cur.execute(LOCK_DEVICES, (TIMING_LOCK, devices))
        if events:
            await cur.execute(LOCK_EVENTS, (RESULTS_LOCK, list(events)))
        await cur.execute(PROGRESS, [devices])
        rows = {d: Mark(at, last_ts, fp, n) for d, at, last_ts, fp, n in await cur.fetchall()}
        probes = work.probes({d: m.token for d, m in rows.items()}, rows)
        counts: dict[str, int] = {}
        if probes:
            await cur.execute(
                COUNT_BETWEEN,
                (
                    [p.device_id for p in probes],
                    [p.after for p in probes],
                    [p.upto for p in probes],
                    [p.since for p in probes],
                    [p.until for p in probes],
                ),
            )
            counts = {d: n for d, n in await cur.fetchall()}
        full = work.decide(counts)
        rebuilds = work.rebuilds()
        if rebuilds:
            failed = set(await _rebuild(cur, work, rebuilds))
            full = sorted([*full, *((d, work.window_of(d)) for d in failed)])
        for device_id, (since, until) in full:
            await cur.execute(FIXES, (device_id, since, until))
            work.recomputed(device_id, _fixes(await cur.fetchall()))
        writes = work.writes
        unlocked = {e for write in writes for e in events_of(write)} - set(events)
        assert not unlocked, f"a timing pass wrote events it did not lock: {unlocked}"
        await _write(cur, writes)
        marks = work.progress()
        tokens: dict[str, datetime] = {}
        done = [(d, ts) for d, ts in marks if ts is not None]
        if done:
            await cur.execute(
                SET_PROGRESS,
                (
                    work.definition_mark,
                    [d for d, _ in done],
                    [ts for _, ts in done],
                    [work.timed(d) for d, _ in done],
                ),
            )
            tokens.update({d: at for d, at in await cur.fetchall()})
        empty = [d for d, ts in marks if ts is None]
        if empty:
            await cur.execute(TOUCH_PROGRESS, [empty])
            tokens.update({d: at for d, at in await cur.fetchall()})
    work.done(tokens)  # committed


async def _rebuild(
    cur: psycopg.AsyncCursor[Any], work: TimingPass, rebuilds: list[Rebuild]
) -> list[str]:
    """Read what ``rebuilds`` need, in five batched reads; the devices that failed."""
    devices = [r.device_id for r in rebuilds]
    device_of = {e: r.device_id for r in rebuilds for e in r.entry_ids}
    entries = sorted(device_of)
    await cur.execute(MARKED_FIXES, (devices, [r.after for r in rebuilds]))
    last = {row[0]: _fixes([row[1:]])[0] for row in await cur.fetchall()}
    records: dict[str, list[TimingRecord]] = {}
    visits: dict[str, list[ZoneVisit]] = {}
    results: dict[str, list[StageResult]] = {}
    if entries:
        await cur.execute(ENTRY_RECORDS, [entries])
        for e, st, en, dev, g, kind, crossed, source in await cur.fetchall():
            records.setdefault(device_of[en], []).append(
                TimingRecord(
                    event_id=e, stage_id=st, entry_id=en, device_id=dev, geofence_id=g,
                    kind=kind, crossed_at=crossed, source_ts=source,
                )
            )  # fmt: skip
        await cur.execute(ENTRY_VISITS, [entries])
        for e, en, g, entered, exited, speed in await cur.fetchall():
            visits.setdefault(device_of[en], []).append(
                ZoneVisit(
                    event_id=e, entry_id=en, geofence_id=g, entered_at=entered,
                    exited_at=exited, max_speed_kmh=speed,
                )
            )  # fmt: skip
        await cur.execute(ENTRY_RESULTS, [entries])
        for e, st, en, started, finished, elapsed, passed, total, status in await cur.fetchall():
            results.setdefault(device_of[en], []).append(
                StageResult(
                    event_id=e, stage_id=st, entry_id=en, started_at=started,
                    finished_at=finished, elapsed_ms=elapsed, checkpoints_passed=passed,
                    checkpoints_total=total, status=status,
                )
            )  # fmt: skip
    await cur.execute(
        FIXES_AFTER,
        (
            devices,
            [r.after for r in rebuilds],
            [r.upto for r in rebuilds],
            [r.since for r in rebuilds],
            [r.until for r in rebuilds],
        ),
    )
    after: dict[str, list[tuple[Any, ...]]] = {}
    for row in await cur.fetchall():
        after.setdefault(row[0], []).append(row[1:])
    failed: list[str] = []
    for device_id in devices:
        rows = StoredRows(
            records=records.get(device_id, ()),
            visits=visits.get(device_id, ()),
            results=results.get(device_id, ()),
        )
        fixes = _fixes(after.get(device_id, []))
        if not work.rebuilt(device_id, last.get(device_id), rows, fixes):
            failed.append(device_id)
    return failed


async def _apply(conn: psycopg.AsyncConnection[Any], writes: list[Write]) -> None:
    events = sorted({e for write in writes for e in events_of(write)})
    async with conn.transaction(), conn.cursor() as cur:
        if events:  # in one order everywhere: no lock cycles between writers
            await cur.execute(LOCK_EVENTS, (RESULTS_LOCK, events))
        await _write(cur, writes)


async def _write(cur: psycopg.AsyncCursor[Any], writes: Sequence[Write]) -> None:
    """The rows of ``writes`` and the re-ranking of the stages they touch (in a transaction).

    One statement per kind of row for the whole pass, not per write: a pass writes for
    up to hundreds of devices. Each device's write covers its own entries, so the
    ``Replace`` writes merge into one set of deletes per stage scope.
    """
    replaces = _merged([w for w in writes if isinstance(w, Replace)])
    updates = [w for w in writes if not isinstance(w, Replace)]
    every: list[Write] = [*replaces, *updates]
    stages: set[int] = set()
    for replace in replaces:
        stages |= await _delete_stale(cur, replace)
    for statement, records in (
        (UPSERT_RECORD_EXACT, _last_by_key([r for w in replaces for r in w.records])),
        (UPSERT_RECORD_EARLIER, _earliest_by_key([r for w in updates for r in w.records])),
    ):
        if records:
            await cur.execute(statement, _columns(records))
    visits = _last_by_key([v for w in every for v in w.visits])
    if visits:
        *keys, speeds = _columns(visits)
        # floats all: an array takes its elements' type, and a speed may be an int
        await cur.execute(UPSERT_VISIT, [*keys, [float(s) for s in speeds]])
    results = _last_by_key([r for w in every for r in w.results])
    if results:
        await cur.execute(UPSERT_RESULT, _columns(results))
    stages |= {r.stage_id for r in results}
    if stages:
        await cur.execute(RERANK, [sorted(stages)])


K = TypeVar("K", TimingRecord, ZoneVisit, StageResult)


def _last_by_key(rows: list[K]) -> list[K]:
    """One row per key, the last: what upserts that overwrite leave, one row at a time."""
    if len(rows) < 2:
        return rows
    return list({row.key: row for row in rows}.values())


def _earliest_by_key(records: list[TimingRecord]) -> list[TimingRecord]:
    """One record per key, the first of the earliest crossings: what upserts that only
    move a record to a strictly earlier crossing leave, one row at a time."""
    if len(records) < 2:
        return records
    kept: dict[tuple[int, int], TimingRecord] = {}
    for record in records:
        held = kept.get(record.key)
        if held is None or record.crossed_at < held.crossed_at:
            kept[record.key] = record
    return list(kept.values())


def _merged(replaces: Sequence[Replace]) -> list[Replace]:
    """One ``Replace`` per stage scope with every entry and row of those given."""
    by_scope: dict[tuple[int, ...] | None, list[Replace]] = {}
    for write in replaces:
        by_scope.setdefault(write.stage_ids, []).append(write)
    return [
        Replace(
            entry_ids=tuple(e for w in group for e in w.entry_ids),
            event_ids=tuple(sorted({e for w in group for e in w.event_ids})),
            stage_ids=scope,
            records=tuple(r for w in group for r in w.records),
            visits=tuple(v for w in group for v in w.visits),
            results=tuple(r for w in group for r in w.results),
        )
        for scope, group in by_scope.items()
    ]


async def _delete_stale(cur: psycopg.AsyncCursor[Any], write: Replace) -> set[int]:
    entries = list(write.entry_ids)
    stages = None if write.stage_ids is None else list(write.stage_ids)
    await cur.execute(
        DELETE_STALE_RECORDS,
        {
            "entries": entries,
            "stages": stages,
            "a": [r.entry_id for r in write.records],
            "b": [r.geofence_id for r in write.records],
        },
    )
    if stages is None:
        await cur.execute(
            DELETE_STALE_VISITS,
            {
                "entries": entries,
                "a": [v.entry_id for v in write.visits],
                "b": [v.geofence_id for v in write.visits],
                "c": [v.entered_at for v in write.visits],
            },
        )
    await cur.execute(
        DELETE_STALE_RESULTS,
        {
            "entries": entries,
            "stages": stages,
            "a": [r.stage_id for r in write.results],
            "b": [r.entry_id for r in write.results],
        },
    )
    return {row[0] for row in await cur.fetchall()}


# The natural keys of the race-domain spec (race-domain.md, "Written by the processor").
NATURAL_KEYS = (
    "CREATE UNIQUE INDEX IF NOT EXISTS timing_records_natural_key"
    " ON timing_records (entry_id, geofence_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS zone_events_natural_key"
    " ON zone_events (entry_id, geofence_id, entered_at)",
    "CREATE UNIQUE INDEX IF NOT EXISTS stage_results_natural_key"
    " ON stage_results (stage_id, entry_id)",
)


async def _execute_all(conn: psycopg.AsyncConnection[Any], statements: Sequence[str]) -> None:
    for statement in statements:
        await conn.execute(statement)
