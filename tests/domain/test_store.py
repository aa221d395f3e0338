"""DomainStore against PostgreSQL: write semantics, ranking, missing tables."""

from __future__ import annotations

import pathlib
from datetime import timedelta

import psycopg
import pytest
import trio

from processor.core.migrate import apply_migrations
from processor.domain.results import Replace, StageResult, TimingRecord, Update, ZoneVisit
from processor.domain.store import (
    LOCK_EVENT,
    RERANK,
    RESULTS_LOCK,
    UPSERT_RESULT,
    DomainStore,
    TablesMissing,
)
from processor.logs import make_logger
from tests.domain.course import at
from tests.helpers import wait_for, waiting_on_advisory_lock

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "schema" / "directus" / "race_tables.sql"


def record(entry: int, fence: int, seconds: float) -> TimingRecord:
    return TimingRecord(
        event_id=1, stage_id=10, entry_id=entry, device_id=f"d{entry}", geofence_id=fence,
        kind="start" if fence == 1 else "finish", crossed_at=at(seconds), source_ts=at(seconds + 1),
    )  # fmt: skip


def result(entry: int, elapsed_s: float | None) -> StageResult:
    return StageResult(
        event_id=1, stage_id=10, entry_id=entry, started_at=at(0),
        finished_at=None if elapsed_s is None else at(elapsed_s),
        elapsed_ms=None if elapsed_s is None else int(elapsed_s * 1000),
        checkpoints_passed=0, checkpoints_total=0,
        status="running" if elapsed_s is None else "finished",
    )  # fmt: skip


async def test_writes_rank_and_replace(fresh_database_url: str, bridge: None) -> None:
    url = fresh_database_url
    await apply_migrations(url, log=make_logger("warning"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
    store = DomainStore(url)
    try:
        await store.apply([Update(records=(record(1, 1, 10),), results=(result(1, 50),))])
        await store.apply([Update(results=(result(2, 40), result(3, None), result(4, 40)))])
        # Earlier wins for an increment, a later one is ignored.
        await store.apply([Update(records=(record(1, 1, 12), record(2, 1, 3)))])
        await store.apply([Update(records=(record(2, 1, 2),))])
        crossed = dict(await store.fetch("SELECT entry_id, crossed_at FROM timing_records"))
        assert crossed == {1: at(10), 2: at(2)}
        ranks = dict(await store.fetch("SELECT entry_id, rank FROM stage_results"))
        assert ranks == {1: 3, 2: 1, 3: None, 4: 1}
        # Replace overwrites (even later) and deletes what the entry no longer has.
        await store.apply([Replace(entry_ids=(1,), records=(record(1, 4, 30),))])
        left = await store.fetch("SELECT entry_id, geofence_id, crossed_at FROM timing_records")
        assert sorted(left) == [(1, 4, at(30)), (2, 1, at(2))]
        ranks = dict(await store.fetch("SELECT entry_id, rank FROM stage_results"))
        assert ranks == {2: 1, 3: None, 4: 1}
        fixes = await store.fixes("nobody", at(0), at(0) + timedelta(days=1))
        assert fixes == []
    finally:
        await store.aclose()


def visit(entry: int, entered_s: float, exited_s: float | None, speed: float) -> ZoneVisit:
    return ZoneVisit(
        event_id=1, entry_id=entry, geofence_id=5, entered_at=at(entered_s),
        exited_at=None if exited_s is None else at(exited_s), max_speed_kmh=speed,
    )  # fmt: skip


TABLES = {
    "timing_records": "entry_id, geofence_id, kind, crossed_at, source_ts",
    "zone_events": "entry_id, geofence_id, entered_at, exited_at, max_speed_kmh",
    "stage_results": "entry_id, started_at, finished_at, elapsed_ms, status, rank",
}


async def _rows(store: DomainStore) -> dict[str, list[tuple[object, ...]]]:
    return {
        table: sorted(await store.fetch(f"SELECT {columns} FROM {table}"), key=repr)
        for table, columns in TABLES.items()
    }


async def test_one_pass_with_repeated_keys_writes_what_one_write_at_a_time_does(
    fresh_database_url: str, second_fresh_database_url: str, bridge: None
) -> None:
    """A pass's rows of a kind go in as one statement, which may not propose a key twice:
    the rows kept must be those a statement per row would have left."""
    writes = [
        Update(records=(record(1, 1, 10), record(2, 1, 7)), results=(result(1, None),)),
        Update(records=(record(1, 1, 8), record(1, 1, 9), record(2, 1, 7.5))),
        Update(records=(record(1, 1, 8),), visits=(visit(1, 3, None, 90),)),
        Update(visits=(visit(1, 3, 6, 120.5),), results=(result(1, 50), result(2, 40))),
        # A pass has one Replace per entry (``_merged`` unites them, deletes included).
        Replace(entry_ids=(3,), records=(record(3, 1, 4), record(3, 1, 2), record(3, 2, 9))),
        Replace(entry_ids=(4,), records=(record(4, 2, 8),), results=(result(4, 30), result(4, 31))),
    ]
    stored = []
    for url, batches in (
        (fresh_database_url, [[w] for w in writes]),
        (second_fresh_database_url, [writes]),
    ):
        await apply_migrations(url, log=make_logger("warning"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FIXTURE.read_text())
        store = DomainStore(url)
        try:
            for batch in batches:
                await store.apply(batch)
            stored.append(await _rows(store))
        finally:
            await store.aclose()
    one_at_a_time, together = stored
    assert together == one_at_a_time
    assert [r[3] for r in together["timing_records"]] == [at(8), at(7), at(2), at(9), at(8)]
    assert together["zone_events"] == [(1, 5, at(3), at(6), 120.5)]
    elapsed = {r[0]: r[3] for r in together["stage_results"]}
    assert elapsed == {1: 50_000, 2: 40_000, 4: 31_000}


async def test_missing_directus_tables_are_reported(fresh_database_url: str, bridge: None) -> None:
    store = DomainStore(fresh_database_url)
    try:
        with pytest.raises(TablesMissing):
            await store.load()
    finally:
        await store.aclose()


async def test_concurrent_writers_of_one_stage_rank_it_right(
    fresh_database_url: str, bridge: None
) -> None:
    """Two instances finishing entries of one stage at the same moment. Without the event
    lock each re-rank misses the other's uncommitted row and both entries get rank 1."""
    url = fresh_database_url
    await apply_migrations(url, log=make_logger("warning"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
    other = psycopg.connect(url)  # the other instance, mid-write: entry 2 done in 40 s
    store = DomainStore(url)
    try:
        other.execute(LOCK_EVENT, (RESULTS_LOCK, 1))
        row = (1, 10, 2, at(0), at(40), 40_000, 0, 0, "finished")
        other.execute(UPSERT_RESULT, [[value] for value in row])  # one array per column
        other.execute(RERANK, [[10]])
        done = trio.Event()

        async def write() -> None:
            await store.apply([Update(results=(result(1, 50),))])
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await wait_for(lambda: waiting_on_advisory_lock(url), what="the store waits")
            assert not done.is_set()
            other.commit()
        ranks = dict(await store.fetch("SELECT entry_id, rank FROM stage_results"))
        assert ranks == {1: 2, 2: 1}
    finally:
        other.close()
        await store.aclose()
