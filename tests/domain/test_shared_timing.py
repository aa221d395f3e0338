"""Durable timing progress: live timing equals ``processor replay`` even when the fixes of
one device are split across instances, dropped from a stopped worker's queue, or stored
before the race definition knew the device.

Every "instance" here is a ``DomainPlugin`` of its own (own engine, own connections) on one
PostgreSQL database; fixes are committed to ``positions`` first, as the writer does, and
only then handed to a worker, or never.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import pytest
import trio
from prometheus_client import CollectorRegistry

from processor.core.migrate import apply_migrations
from processor.core.model import Entry, Outcome
from processor.domain import commands, live
from processor.domain import plugin as live_plugin
from processor.domain.live import LiveEngine
from processor.domain.plugin import DomainMetrics, DomainPlugin
from processor.domain.store import LOCK_DEVICE, TIMING_LOCK, DomainStore
from processor.domain.timing import Fix
from processor.logs import make_logger
from tests.domain.course import at, fix, line
from tests.domain.model_store import position_of
from tests.domain.test_app import LONS, insert_race, rows
from tests.helpers import store_positions, wait_for, waiting_on_advisory_lock

# Start at 5 s, checkpoints at 25 and 46.667 s, the zone 60-80 s, the finish at 95 s.
FIXES = [fix(i * 10, lon, speed=40.0 + i) for i, lon in enumerate(LONS)]
EXPECTED_RECORDS = {
    ("start", 0): at(5),
    ("checkpoint", 1): at(25),
    ("checkpoint", 2): at(46.667),
    ("finish", 9): at(95),
}


@pytest.fixture
async def url(fresh_database_url: str, bridge: None) -> str:
    await apply_migrations(fresh_database_url, log=make_logger("warning"))
    return fresh_database_url


def plugin(url: str, name: str) -> DomainPlugin:
    """One instance's race domain: its own engine state and its own two connections."""
    return DomainPlugin(
        refresh_s=3600.0,
        log=make_logger("warning").bind(plugin="domain", instance=name),
        metrics=DomainMetrics.create(CollectorRegistry()),
        loader=DomainStore(url, application_name=f"test-{name}-loader"),
        writer=DomainStore(url, application_name=f"test-{name}"),
    )


def commit(url: str, imei: str, fixes: Sequence[Fix]) -> list[Any]:
    """What the writer does before any observer hears of a batch: the rows are stored."""
    positions = [position_of(imei, f) for f in fixes]
    store_positions(url, positions)
    return positions


def timing_rows(url: str, race: dict[str, Any]) -> dict[str, Any]:
    names = {v: k for k, v in race["fences"].items()}
    entry = race["entry"]
    records = rows(
        url,
        "SELECT geofence_id, crossed_at, source_ts FROM timing_records WHERE entry_id = %s",
        entry,
    )
    return {
        "records": {names.get(g, g): (t, s) for g, t, s in records},
        "results": rows(
            url,
            "SELECT started_at, finished_at, elapsed_ms, checkpoints_passed, checkpoints_total,"
            " status, rank FROM stage_results WHERE entry_id = %s",
            entry,
        ),
        "visits": rows(
            url,
            "SELECT geofence_id, entered_at, exited_at, max_speed_kmh FROM zone_events"
            " WHERE entry_id = %s ORDER BY entered_at",
            entry,
        ),
    }


def crossings(url: str, race: dict[str, Any]) -> dict[Any, Any]:
    return {k: t for k, (t, _) in timing_rows(url, race)["records"].items()}


async def assert_equals_replay(
    url: str, race: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``processor replay`` over the same stored fixes finds nothing to change."""
    live = timing_rows(url, race)
    capsys.readouterr()
    store = DomainStore(url, application_name="test-replay")
    try:
        args = argparse.Namespace(event=race["event"], stage=None, since=None, until=None)
        assert await commands.replay_command(store, args) == 0
    finally:
        await store.aclose()
    out = capsys.readouterr().out
    assert "timing_records: 0 added, 0 changed, 0 removed" in out, out
    assert "stage_results: 0 added, 0 changed, 0 removed" in out, out
    assert timing_rows(url, race) == live
    return live


def progress(url: str, imei: str) -> list[tuple[Any, ...]]:
    return rows(url, "SELECT last_ts FROM timing_progress WHERE device_id = %s", imei)


def gauge(p: DomainPlugin, name: str) -> float:
    for metric in (p.metrics.backlog_devices, p.metrics.timing_deferred):
        for sample in metric.collect()[0].samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def recomputes(p: DomainPlugin, reason: str) -> float:
    return p.metrics.recomputes.labels(reason)._value.get()


@asynccontextmanager
async def two_instances(url: str) -> AsyncIterator[tuple[DomainPlugin, DomainPlugin]]:
    """Two instances' domain plug-ins on one database, definitions loaded; closed after."""
    a, b = plugin(url, "a"), plugin(url, "b")
    try:
        for p in (a, b):
            assert await p.reload()
        yield a, b
    finally:
        for p in (a, b):
            await p.loader.aclose()
            await p.writer.aclose()


@asynccontextmanager
async def running(p: DomainPlugin) -> AsyncIterator[DomainPlugin]:
    async with trio.open_nursery() as nursery:
        await nursery.start(p.run)
        yield p
        nursery.cancel_scope.cancel()


async def test_two_instances_taking_turns_on_one_device_equal_replay(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Alternating 2-fix chunks: each instance alone would time segments that skip the
    other's fixes (old code: finish at 94.444 s from 14.078 at 70 s -> 14.105 at 100 s)."""
    race = insert_race(url)
    async with two_instances(url) as (a, b):
        engine_a, engine_b = LiveEngine(a.definitions.current), LiveEngine(b.definitions.current)
        for i in range(0, len(FIXES), 2):
            positions = commit(url, race["imei"], FIXES[i : i + 2])
            p, engine = (a, engine_a) if i % 4 == 0 else (b, engine_b)
            await p.process(engine, positions)
        live = await assert_equals_replay(url, race, capsys)
    assert {k: t for k, (t, _) in live["records"].items()} == EXPECTED_RECORDS
    assert live["results"] == [(at(5), at(95), 90_000, 2, 2, "finished", 1)]
    assert progress(url, race["imei"]) == [(FIXES[-1].ts,)]
    # Every chunk found the other instance's writes since its own: none went on blindly,
    # and all but the very first (no progress row yet) restored the track from the rows.
    reasons = ("cold", "shared", "rebuilt")
    assert [recomputes(a, r) for r in reasons] == [1, 0, 2]
    assert [recomputes(b, r) for r in reasons] == [0, 0, 3]


async def test_an_interleaving_fix_of_another_instance_forces_a_recompute(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Instance b has committed chunks but not timed them yet when instance a times its
    next one. First a's track is still the latest written, but the stored fixes between
    its last fix and the new ones outnumber what it got: it recomputes instead of timing
    the segment 30 s -> 60 s. Then b times its chunks before a's last one: a sees b's
    write and recomputes (old code: finish at 94.444 s on the segment 70 s -> 100 s)."""
    race = insert_race(url)
    imei = race["imei"]
    async with two_instances(url) as (a, b):
        engine_a, engine_b = LiveEngine(a.definitions.current), LiveEngine(b.definitions.current)
        await a.process(engine_a, commit(url, imei, FIXES[0:2]))  # cold
        await a.process(engine_a, commit(url, imei, FIXES[2:4]))  # incremental
        queued_b = commit(url, imei, FIXES[4:6])  # b's, still in its queue
        await a.process(engine_a, commit(url, imei, FIXES[6:8]))  # interleaved
        queued_b += commit(url, imei, FIXES[8:10])
        queued_a = commit(url, imei, FIXES[10:])
        await b.process(engine_b, queued_b)  # cold
        await a.process(engine_a, queued_a)  # shared: b wrote since
        live = await assert_equals_replay(url, race, capsys)
    assert {k: t for k, (t, _) in live["records"].items()} == EXPECTED_RECORDS
    assert live["results"] == [(at(5), at(95), 90_000, 2, 2, "finished", 1)]
    # 3 of a's 4 chunks: cold (no row yet); interleaved and shared, both rebuilt from the
    # rows (the first fed the stored fixes 40-70 s). b's fixes at 40 and 50 s are not
    # after the progress a wrote (70 s), but no late fix either: the row's ``timed`` count
    # says a read every stored fix up to 70 s, so b's rebuild only feeds 80-90 s.
    reasons = ("cold", "late", "interleaved", "shared", "rebuilt")
    assert [recomputes(a, r) for r in reasons] == [1, 0, 0, 0, 2]
    assert [recomputes(b, r) for r in reasons] == [0, 0, 0, 0, 1]


async def test_a_late_fix_timed_elsewhere_is_not_overwritten_by_a_stale_track(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Instance b times a late fix (7 s) that moves the start from 5 s to 7.5 s; its
    recomputation ends at the same last fix (10 s) as a's track. Comparing the last fix
    time alone, a would go on with its stale clock (started 5 s, elapsed 90 s); the
    progress token tells it someone else wrote the device."""
    race = insert_race(url)
    imei = race["imei"]
    async with two_instances(url) as (a, b):
        engine_a, engine_b = LiveEngine(a.definitions.current), LiveEngine(b.definitions.current)
        await a.process(engine_a, commit(url, imei, FIXES[0:2]))
        await b.process(engine_b, commit(url, imei, [fix(7, 13.998)]))
        assert progress(url, imei) == [(FIXES[1].ts,)]
        await a.process(engine_a, commit(url, imei, FIXES[2:]))
        live = await assert_equals_replay(url, race, capsys)
    assert crossings(url, race)[("start", 0)] == at(7.5)
    assert live["results"] == [(at(7.5), at(95), 87_500, 2, 2, "finished", 1)]
    # b's late fix (7 s, before a's progress at 10 s, stored after a's pass read the
    # fixes up to 10 s) needed the full replay; a then
    # restored its track from the rows b wrote, not from its own stale clock.
    assert [recomputes(b, r) for r in ("cold", "rebuilt")] == [1, 0]
    assert [recomputes(a, r) for r in ("shared", "rebuilt")] == [0, 1]


async def test_fixes_no_worker_timed_are_caught_up_without_a_new_fix(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a) SIGTERM dropped the worker's queue: a fresh instance times the stored fixes at
    start. Then an instance that died (kill -9) left fixes untimed while this one runs:
    the next definition refresh catches them up."""
    race = insert_race(url)
    imei = race["imei"]
    first = plugin(url, "first")
    assert await first.reload()
    engine = LiveEngine(first.definitions.current)
    await first.process(engine, commit(url, imei, FIXES[:3]))  # timed: the start
    commit(url, imei, FIXES[3:6])  # committed, still queued at SIGTERM: dropped
    await first.loader.aclose()
    await first.writer.aclose()
    assert set(crossings(url, race)) == {("start", 0)}

    async with running(plugin(url, "second")) as second:
        await wait_for(
            lambda: ("checkpoint", 2) in crossings(url, race), 10, what="the catch-up at start"
        )
        assert progress(url, imei) == [(FIXES[5].ts,)]
        # Another instance commits the rest and dies before timing it; no fix follows.
        commit(url, imei, FIXES[6:])
        second.request_reload()
        await wait_for(lambda: ("finish", 9) in crossings(url, race), 10, what="catch-up")
        # Both sweeps (the definition's at start, the catch-up after the reload) found the
        # rows complete up to their progress (``timed`` = the stored fixes up to it), so
        # they restored the track from the rows and fed only the fixes after it.
        reasons = ("definition", "catch-up", "rebuilt")
        assert [recomputes(second, r) for r in reasons] == [0, 0, 2]
    live = await assert_equals_replay(url, race, capsys)
    assert {k: t for k, (t, _) in live["records"].items()} == EXPECTED_RECORDS
    assert live["visits"] == [(race["fences"][("zone", 0)], at(60), at(80), 47.0)]
    assert progress(url, imei) == [(FIXES[-1].ts,)]


async def test_a_restart_replays_a_device_whose_late_fix_nobody_timed(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A late fix (7 s, before the progress at 20 s) was committed, then the instance died
    before timing it. The next start must not restore the track from the rows (they do not
    reflect that fix: ``timed`` 3, stored 4 up to 20 s) but replay: the start moves from
    5 s to 7.5 s."""
    race = insert_race(url)
    imei = race["imei"]
    first = plugin(url, "first")
    assert await first.reload()
    await first.process(LiveEngine(first.definitions.current), commit(url, imei, FIXES[:3]))
    commit(url, imei, [fix(7, 13.998)])  # committed, never timed: kill -9
    await first.loader.aclose()
    await first.writer.aclose()
    assert crossings(url, race)[("start", 0)] == at(5)

    async with running(plugin(url, "second")) as second:
        # The pass counts its reason just after its rows commit: wait for both.
        await wait_for(
            lambda: (
                crossings(url, race)[("start", 0)] == at(7.5)
                and recomputes(second, "definition") >= 1
            ),
            10,
            what="the replay at start",
        )
        assert [recomputes(second, r) for r in ("definition", "rebuilt")] == [1, 0]
    await assert_equals_replay(url, race, capsys)


async def test_a_reload_times_fixes_stored_before_the_definition_knew_them(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(b) The car drove the stage before its entry was added (and before a checkpoint was
    drawn): the reload that brings the entry, and the one that brings the checkpoint,
    time the stored fixes without any new fix arriving."""
    race = insert_race(url)
    imei = race["imei"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM entries WHERE id = %s", (race["entry"],))
    commit(url, imei, FIXES)
    async with running(plugin(url, "live")) as p:
        assert imei not in p.definitions.current.entries_by_device
        with psycopg.connect(url, autocommit=True) as conn:
            [(entry,)] = conn.execute(
                "INSERT INTO entries (event_id, device_id, number)"
                " SELECT %s, id, '7' FROM devices WHERE imei = %s RETURNING id",
                (race["event"], imei),
            ).fetchall()
        race["entry"] = entry
        p.request_reload()
        await wait_for(lambda: crossings(url, race) == EXPECTED_RECORDS, 10, what="entry added")

        with psycopg.connect(url, autocommit=True) as conn:
            [(extra,)] = conn.execute(
                "INSERT INTO geofences (event_id, stage_id, kind, sequence, geometry)"
                " VALUES (%s, %s, 'checkpoint', 3, %s) RETURNING id",
                (race["event"], race["stage"], orjson.dumps(line(14.092)).decode()),
            ).fetchall()
        race["fences"][("checkpoint", 3)] = extra
        p.request_reload()
        # 14.09 at 80 s -> 14.095 at 90 s crosses 14.092 at 84 s.
        await wait_for(
            lambda: crossings(url, race).get(("checkpoint", 3)) == at(84), 10, what="checkpoint"
        )
    live = await assert_equals_replay(url, race, capsys)
    assert live["results"] == [(at(5), at(95), 90_000, 3, 3, "finished", 1)]


async def test_replay_waits_for_the_device_lock_and_records_progress(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live worker's pass holds the device (its transaction is open): ``processor
    replay`` waits for it rather than interleave, then records the device's progress."""
    race = insert_race(url)
    imei = race["imei"]
    commit(url, imei, FIXES)
    worker = psycopg.connect(url)  # another instance, mid-pass on this device
    store = DomainStore(url, application_name="test-replay")
    try:
        worker.execute(LOCK_DEVICE, (TIMING_LOCK, imei))
        done = trio.Event()

        async def replay() -> None:
            args = argparse.Namespace(event=race["event"], stage=None, since=None, until=None)
            assert await commands.replay_command(store, args) == 0
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(replay)
            await wait_for(lambda: waiting_on_advisory_lock(url), 10, what="replay waits")
            assert not done.is_set()
            assert crossings(url, race) == {}
            worker.commit()
        assert crossings(url, race) == EXPECTED_RECORDS
        assert progress(url, imei) == [(FIXES[-1].ts,)]
    finally:
        worker.close()
        await store.aclose()


async def test_two_instances_timing_two_devices_at_once_equal_replay(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Truly concurrent passes: both instances commit and time chunks holding fixes of two
    devices (of two events) at the same time; the locks make them take turns per device,
    in one order, so neither deadlocks and both races end as a replay leaves them."""
    races = [insert_race(url), insert_race(url)]

    async def instance(p: DomainPlugin, chunks: range) -> None:
        engine = LiveEngine(p.definitions.current)
        for i in chunks:
            positions = [q for r in races for q in commit(url, r["imei"], FIXES[i : i + 1])]
            await p.process(engine, positions)

    async with two_instances(url) as (a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(instance, a, range(0, len(FIXES), 2))
            nursery.start_soon(instance, b, range(1, len(FIXES), 2))
        for race in races:
            live = await assert_equals_replay(url, race, capsys)
            assert {k: t for k, (t, _) in live["records"].items()} == EXPECTED_RECORDS
    assert a.metrics.write_failures._value.get() == 0
    # Most passes find the other's write: they restore the tracks from the rows (how many
    # depends on how the two interleave; a fix committed after the other read the stored
    # ones is late and replays everything).
    assert recomputes(a, "rebuilt") + recomputes(b, "rebuilt") >= 1


# A long race so far: 5,000 fixes at 1 s, through the start (14.0) and both checkpoints
# (14.03, 14.06), into the zone (14.07-14.08) and still in it at 14.075; then 200 more in
# chunks of 5, out of the zone and over the finish (14.1).
HISTORY = [fix(i, 13.99 + i * 0.000017, speed=40.0 + (i * 13) % 50) for i in range(5000)]
TAIL = [fix(5000 + i, 14.075 + (i + 1) * 0.00015, speed=30.0 + i % 40) for i in range(200)]
CHUNK = 5


@pytest.mark.parametrize("path", ["rebuilt", "replay"])
async def test_a_long_history_taken_in_turns_reads_the_chunk_not_the_history(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Two instances alternate on a device mid-stage and inside the zone: each pass
    restores the track from the rows and reads the stored fixes of its chunk (plus the
    one at the progress), not the 5,000 before; ``replay``, the old path for comparison,
    reads them all every time. Both end exactly as ``processor replay`` does."""
    if path == "replay":
        monkeypatch.setattr(live, "REBUILDABLE", frozenset())
    race = insert_race(url)
    imei = race["imei"]
    reads: list[int] = []
    seconds: list[float] = []
    async with two_instances(url) as (a, b):
        engines = [LiveEngine(a.definitions.current), LiveEngine(b.definitions.current)]
        await a.writer.time(engines[0].plan(commit(url, imei, HISTORY)))
        split = timing_rows(url, race)
        assert set(split["records"]) == {("start", 0), ("checkpoint", 1), ("checkpoint", 2)}
        [(_, _, exited, _)] = split["visits"]
        assert exited is None  # inside the zone at the split
        for n, i in enumerate(range(0, len(TAIL), CHUNK)):
            p, engine = (b, engines[1]) if n % 2 == 0 else (a, engines[0])
            work = engine.plan(commit(url, imei, TAIL[i : i + CHUNK]))
            started = time.perf_counter()
            await p.writer.time(work)
            seconds.append(time.perf_counter() - started)
            reads.append(work.fixes_read)
            expected = {"rebuilt"} if path == "rebuilt" else {"cold", "shared"}
            assert set(work.reasons.values()) <= expected, work.reasons
        live_rows = await assert_equals_replay(url, race, capsys)
    print(
        f"\n{path}: {len(reads)} passes, stored fixes read per pass {min(reads)}..{max(reads)},"
        f" {sum(seconds) / len(seconds) * 1000:.1f} ms per pass (max {max(seconds) * 1000:.1f})"
    )
    if path == "rebuilt":
        assert max(reads) == CHUNK + 1
    else:
        assert min(reads) >= len(HISTORY)
    assert set(live_rows["records"]) == {*split["records"], ("finish", 9)}
    [(_, _, exited, top)] = live_rows["visits"]
    assert exited is not None
    assert top == max(f.speed for f in HISTORY + TAIL if 14.07 < f.x < 14.08)


async def test_stored_rows_that_do_not_fit_fall_back_to_the_full_replay(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a rebuild starts from is gone or inconsistent: the stage result of a running
    clock (an operator's DELETE), then the stored fix at the progress. Each time the
    other instance replays every stored fix instead, and ends as ``processor replay``."""
    race = insert_race(url)
    imei = race["imei"]
    async with two_instances(url) as (a, b):
        engine_a, engine_b = LiveEngine(a.definitions.current), LiveEngine(b.definitions.current)
        await a.process(engine_a, commit(url, imei, FIXES[0:3]))  # started: a running clock
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM stage_results WHERE entry_id = %s", (race["entry"],))
        await b.process(engine_b, commit(url, imei, FIXES[3:5]))
        assert [recomputes(b, r) for r in ("cold", "rebuilt")] == [1, 0]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM positions WHERE device_id = %s AND ts = %s", (imei, FIXES[4].ts)
            )
        await a.process(engine_a, commit(url, imei, FIXES[5:7]))
        assert [recomputes(a, r) for r in ("cold", "shared", "rebuilt")] == [1, 1, 0]
        await b.process(engine_b, commit(url, imei, FIXES[7:]))  # and now the rows fit
        assert [recomputes(b, r) for r in ("cold", "shared", "rebuilt")] == [1, 0, 1]
        live_rows = await assert_equals_replay(url, race, capsys)
    assert live_rows["results"] == [(at(5), at(95), 90_000, 2, 2, "finished", 1)]


async def test_fixes_the_worker_has_no_room_for_do_not_hold_up_the_writer(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the worker's queue full, a committed chunk is not queued (the writer would
    wait for timing): its devices are noted and caught up from the stored rows. Here the
    chunk is a late fix (7 s) no later chunk reveals and no catch-up finds (it is older
    than the progress): only the backlog brings it, and the start moves to 7.5 s."""
    race = insert_race(url)
    imei = race["imei"]
    commit(url, imei, FIXES)
    async with running(plugin(url, "live")) as p:
        await wait_for(lambda: crossings(url, race) == EXPECTED_RECORDS, 10, what="start sweep")
        (observer,) = p.observers

        async def committed(fixes: Sequence[Fix]) -> None:
            positions = commit(url, imei, fixes)
            entries = [Entry(f"{i + 1}-0", pos) for i, pos in enumerate(positions)]
            with trio.fail_after(1):  # never waits for the worker
                await observer.committed(entries, [Outcome.INSERTED] * len(entries))

        holder = psycopg.connect(url)  # the lock lasts as long as its transaction
        try:
            holder.execute(LOCK_DEVICE, (TIMING_LOCK, imei))  # the worker's next pass waits
            await committed([fix(101, 14.12)])
            await wait_for(lambda: waiting_on_advisory_lock(url), 10, what="the worker waits")
            with contextlib.suppress(trio.WouldBlock):
                while True:
                    p._send.send_nowait(live_plugin.CatchUp())  # fill the queue
            await committed([fix(7, 13.998)])
            assert p._commits.backlog == {imei}
        finally:
            holder.close()
        # The pass counts its reason just after its rows commit: wait for both.
        await wait_for(
            lambda: crossings(url, race)[("start", 0)] == at(7.5) and recomputes(p, "backlog") >= 1,
            20,
            what="the backlog",
        )
        assert recomputes(p, "backlog") == 1
    await assert_equals_replay(url, race, capsys)


async def test_a_drained_backlog_is_timed_from_the_stored_rows(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Full batches are only noted; the first partial one gets everything timed, and the
    result is what a replay of the stored fixes gives."""
    race = insert_race(url)
    imei = race["imei"]
    p = plugin(url, "drain")
    p.batch_max = 3
    async with running(p):
        # The start sweep is over (nothing stored yet): it cannot time the fixes below.
        await wait_for(lambda: recomputes(p, "definition") == 1, 5, what="the start sweep")
        (observer,) = p.observers

        async def committed(fixes: Sequence[Fix]) -> None:
            positions = commit(url, imei, fixes)
            entries = [
                Entry(f"{f.ts.timestamp()}-0", pos) for f, pos in zip(fixes, positions, strict=True)
            ]
            await observer.committed(entries, [Outcome.INSERTED] * len(entries))

        for i in range(0, 9, 3):
            await committed(FIXES[i : i + 3])  # full batches: a backlog
        assert p._commits.backlog == {imei}
        assert p._receive.statistics().current_buffer_used == 0  # nothing handed over
        assert crossings(url, race) == {}
        assert gauge(p, "processor_domain_backlog_devices") == 1
        assert gauge(p, "processor_domain_timing_deferred") == 1
        await committed(FIXES[9:])  # a partial batch: drained
        # The pass counts its reason just after its rows commit: wait for both.
        await wait_for(
            lambda: (
                crossings(url, race) == EXPECTED_RECORDS
                and recomputes(p, "backlog") + recomputes(p, "rebuilt") >= 1
            ),
            10,
            what="timing",
        )
        assert gauge(p, "processor_domain_backlog_devices") == 0
        assert gauge(p, "processor_domain_timing_deferred") == 0
        assert recomputes(p, "backlog") + recomputes(p, "rebuilt") >= 1
    await assert_equals_replay(url, race, capsys)
