"""Stage clocks: start opens, checkpoints count in between, finish closes."""

from __future__ import annotations

from processor.domain.timing import Fix, replay
from tests.domain.course import DEVICE, ENTRY, STAGE, at, definition, fix


def lons_every_10s(*lons: float) -> list[Fix]:
    return [fix(i * 10, lon) for i, lon in enumerate(lons)]


def test_full_stage() -> None:
    # Lines at 14.0 (start), 14.03, 14.06 (checkpoints), 14.1 (finish); crossings at the
    # midpoints of 0.02-degree segments, 5 s after the fix before.
    track = replay(
        definition(), DEVICE, lons_every_10s(13.99, 14.01, 14.02, 14.04, 14.05, 14.07, 14.09, 14.11)
    )
    kinds = {r.geofence_id: (r.kind, r.crossed_at) for r in track.records.values()}
    assert kinds == {
        1: ("start", at(5)),
        2: ("checkpoint", at(25)),
        3: ("checkpoint", at(45)),
        4: ("finish", at(65)),
    }
    [result] = track.results()
    assert (result.stage_id, result.entry_id, result.status) == (STAGE, ENTRY, "finished")
    assert result.elapsed_ms == 60_000
    assert (result.checkpoints_passed, result.checkpoints_total) == (2, 2)


def test_one_segment_crossing_everything_orders_by_position() -> None:
    track = replay(definition(), DEVICE, [fix(0, 13.95), fix(20, 14.15)])
    [result] = track.results()
    # 13.95 -> 14.15 in 20 s: start at 5 s, finish at 15 s.
    assert (result.started_at, result.finished_at, result.elapsed_ms) == (at(5), at(15), 10_000)
    assert result.checkpoints_passed == 2


def test_checkpoint_before_start_and_finish_without_start_do_not_count() -> None:
    # Driving the stage backwards: finish, checkpoints, then the start line.
    track = replay(definition(), DEVICE, lons_every_10s(14.11, 14.09, 14.05, 14.02, 13.99))
    assert {r.kind for r in track.records.values()} == {"start"}
    [result] = track.results()
    assert (result.status, result.checkpoints_passed, result.elapsed_ms) == ("running", 0, None)


def test_missed_checkpoint_is_visible_in_the_result() -> None:
    track = replay(definition(), DEVICE, lons_every_10s(13.99, 14.01, 14.02))
    fixes = [fix(30, 14.02, lat=45.5), fix(40, 14.08, lat=45.5), fix(50, 14.08), fix(60, 14.11)]
    for f in fixes:  # a detour around the first checkpoint line's ends
        track.feed(f)
    [result] = track.results()
    assert (result.status, result.checkpoints_passed, result.checkpoints_total) == (
        "finished",
        0,
        2,
    )


def test_crossings_after_finish_are_ignored() -> None:
    lons = (13.99, 14.11, 13.99, 14.11)
    track = replay(definition(), DEVICE, lons_every_10s(*lons))
    assert len(track.records) == 4
    [result] = track.results()
    # 13.99 -> 14.11 in 10 s: start at 0.833 s, finish at 9.167 s; the way back is ignored.
    assert (result.started_at, result.finished_at) == (at(0.833), at(9.167))
    assert result.elapsed_ms == 8334
