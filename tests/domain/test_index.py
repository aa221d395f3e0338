"""The geofence index: prepared shapes, an STRtree, cost independent of the fence count.

The engine only tests the geofences the index hands it; these tests pin down that it
hands over every fence a segment can touch (same answer as testing them all) and no more
than the ones nearby (the work per fix does not grow with the event's fence count).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest
import shapely  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain import timing
from processor.domain.definition import RaceDefinition, build_definition
from processor.domain.geofence import Geofence, GeofenceIndex, contains, segment_crossing
from processor.domain.timing import Fix, interpolate, replay
from tests.domain.course import DEVICE, LAT, fix, geofence_rows, raw_rows


def far_fences(n: int, first_id: int = 1000) -> list[dict[str, Any]]:
    """``n`` lines and zones spread over a degree south of the course (lat 44.9 and below),
    each within a few kilometres of the next: many fences, none near the road."""
    rows = []
    for i in range(n):
        lon, lat = 13.5 + (i % 50) * 0.02, 44.9 - (i // 50) * 0.02
        if i % 4:
            geometry = {"type": "LineString", "coordinates": [[lon, lat], [lon, lat - 0.01]]}
            kind, stage = "checkpoint", 10
        else:
            ring = [[lon, lat], [lon + 0.01, lat], [lon + 0.01, lat - 0.01], [lon, lat - 0.01]]
            geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
            kind, stage = "zone", None
        rows.append(
            {
                "id": first_id + i,
                "event_id": 1,
                "stage_id": stage,
                "kind": kind,
                "name": "",
                "sequence": 5,
                "geometry": geometry,
                "speed_limit_kmh": None,
            }
        )
    return rows


def with_fences(rows: list[dict[str, Any]]) -> RaceDefinition:
    built = build_definition(raw_rows(geofences=rows))
    assert built.rejected == []
    return built.definition


def test_geometries_are_prepared() -> None:
    d = with_fences(geofence_rows() + far_fences(40))
    fences = d.events[1].index.geofences
    assert len(fences) == 45
    assert all(shapely.is_prepared(g.shape) for g in fences)


def test_work_per_fix_does_not_grow_with_the_number_of_geofences(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same drive tests the same fences whether the event has 5 or 2,005 of them."""
    calls = {"lines": 0, "zones": 0}

    def counted_crossing(*args: Any) -> float | None:
        calls["lines"] += 1
        return segment_crossing(*args)

    def counted_contains(zone: Geofence, x: float, y: float) -> bool:
        calls["zones"] += 1
        return contains(zone, x, y)

    monkeypatch.setattr(timing, "segment_crossing", counted_crossing)
    monkeypatch.setattr(timing, "contains", counted_contains)
    drive = [fix(i * 5, 13.99 + i * 0.003, LAT + (i % 3) * 0.001) for i in range(45)]

    seen = []
    for extra in (0, 2000):
        calls.update(lines=0, zones=0)
        d = with_fences(geofence_rows() + far_fences(extra))
        track = replay(d, DEVICE, drive)
        seen.append((dict(calls), len(track.records), len(track.visits)))
    assert seen[0] == seen[1]
    few = seen[0]
    assert (few[1], few[2]) == (4, 1)  # the drive does cross the course
    assert few[0]["lines"] < 4 * len(drive)  # only the lines near each segment are tested


def reference(d: RaceDefinition, fixes: list[Fix]) -> dict[int, datetime]:
    """First crossing of every line, testing every line against every segment: no index."""
    first: dict[int, datetime] = {}
    for a, b in itertools.pairwise(fixes):
        for g in d.events[1].index.geofences:
            if g.id in first or not g.is_line:
                continue
            t = segment_crossing(a.x, a.y, b.x, b.y, g.pieces)
            if t is not None:
                first[g.id] = interpolate(a, b, t)
    return first


def reference_zones(d: RaceDefinition, fixes: list[Fix]) -> set[tuple[int, datetime]]:
    """(zone, entered_at) of every visit, testing every zone at every fix: no index."""
    entered: set[tuple[int, datetime]] = set()
    for g in d.events[1].index.geofences:
        if g.is_line:
            continue
        inside = False
        for f in fixes:
            now = contains(g, f.x, f.y)
            if now and not inside:
                entered.add((g.id, f.ts))
            inside = now
    return entered


Scattered = tuple[list[dict[str, Any]], list[dict[str, Any]], list[Fix]]


@st.composite
def scattered(draw: st.DrawFn) -> Scattered:
    """Random start lines (each its own stage, so every first crossing is recorded) and
    zones over a 0.2-degree square, and a random drive through it with steps both shorter
    and longer than the engine's neighbourhood box."""
    coordinate = st.floats(-0.1, 0.1)
    rows: list[dict[str, Any]] = []
    stages = []
    for i in range(draw(st.integers(1, 30))):
        x, y = 14.0 + draw(coordinate), LAT + draw(coordinate)
        if draw(st.booleans()):
            dx, dy = draw(st.floats(-0.03, 0.03)), draw(st.floats(-0.03, 0.03))
            if abs(dx) + abs(dy) < 1e-4:
                continue
            geometry = {"type": "LineString", "coordinates": [[x, y], [x + dx, y + dy]]}
            kind, stage = "start", 100 + i
            stages.append(stage)
        else:
            w, h = draw(st.floats(0.001, 0.04)), draw(st.floats(0.001, 0.04))
            ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
            geometry, kind, stage = {"type": "Polygon", "coordinates": [ring]}, "zone", None
        rows.append(
            {
                "id": i + 1,
                "event_id": 1,
                "stage_id": stage,
                "kind": kind,
                "name": "",
                "sequence": 0,
                "geometry": geometry,
                "speed_limit_kmh": None,
            }
        )
    x, y, fixes = 14.0 + draw(coordinate), LAT + draw(coordinate), []
    for i in range(draw(st.integers(2, 40))):
        step = draw(st.sampled_from([0.002, 0.01, 0.05]))
        x += draw(st.floats(-step, step))
        y += draw(st.floats(-step, step))
        fixes.append(fix(i * 7.5, x, y))
    stage_rows = [
        {"id": s, "event_id": 1, "name": f"S{s}", "sequence": s, "opens_at": None,
         "closes_at": None}
        for s in stages
    ]  # fmt: skip
    return rows, stage_rows, fixes


@settings(max_examples=200, deadline=None)
@given(scattered())
def test_index_finds_what_testing_every_fence_finds(case: Scattered) -> None:
    fences, stages, fixes = case
    built = build_definition(raw_rows(geofences=fences, stages=stages))
    assert built.rejected == []
    d = built.definition
    track = replay(d, DEVICE, fixes)
    assert {g: r.crossed_at for (_, g), r in track.records.items()} == reference(d, fixes)
    assert {(g, t) for (_, g, t) in track.visits} == reference_zones(d, fixes)


boxes = st.tuples(
    st.floats(13.8, 14.2), st.floats(LAT - 0.2, LAT + 0.2), st.sampled_from([0.02, 0.05, 0.3, 3.0])
)


@settings(max_examples=300, deadline=None)
@given(scattered(), st.lists(boxes, min_size=1, max_size=10), st.booleans())
def test_grid_and_tree_hand_over_the_same_fences(
    case: Scattered, queries: list[tuple[float, float, float]], huge: bool
) -> None:
    """The grid in front of the STRtree answers as the tree: for small boxes (the grid),
    wide ones (the tree), and with a fence too big for the grid's cells."""
    fences, stages, _ = case
    if huge:  # a zone of a few degrees: a candidate for every box
        ring = [[12.0, LAT - 2], [16.0, LAT - 2], [16.0, LAT + 2], [12.0, LAT + 2]]
        region = {
            "id": 999,
            "event_id": 1,
            "stage_id": None,
            "kind": "zone",
            "name": "region",
            "sequence": 0,
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            "speed_limit_kmh": None,
        }
        fences = [*fences, region]
    built = build_definition(raw_rows(geofences=fences, stages=stages))
    assert built.rejected == []
    index = built.definition.events[1].index
    for x, y, margin in queries:
        grid = index.around(x, y, margin)
        tree = index.tree_around((x - margin, y - margin, x + margin, y + margin))
        assert grid.box == tree.box
        assert [g.id for g in grid.geofences] == [g.id for g in tree.geofences]
    if huge:
        assert all(999 in [g.id for g in index.around(x, y, m).geofences] for x, y, m in queries)


def test_a_straight_drive_looks_its_neighbourhood_up_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached box is centred ahead of travel: a drive at ~150 km/h with a fix every
    5 s (0.003 deg) asks the index once per ~10 fixes, not once per ~7 (a box centred on
    the fix it was asked at), and still finds every crossing."""
    asked: list[tuple[float, float]] = []
    around = GeofenceIndex.around

    def counted(self: GeofenceIndex, x: float, y: float, margin: float) -> Any:
        asked.append((x, y))
        return around(self, x, y, margin)

    monkeypatch.setattr(GeofenceIndex, "around", counted)
    drive = [fix(i * 5, 13.99 + i * 0.003) for i in range(60)]
    d = with_fences(geofence_rows())
    track = replay(d, DEVICE, drive)
    assert len(track.records) == 4  # start, both checkpoints, finish
    assert len(asked) <= 1 + len(drive) // 10  # the first box: no direction yet
    assert any(x > fx.x for (x, _), fx in zip(asked[1:], drive[1:], strict=False))
