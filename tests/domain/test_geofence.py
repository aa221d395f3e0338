"""Line crossings and zones on analytic synthetic tracks."""

from __future__ import annotations

from datetime import timedelta

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.definition import build_definition
from processor.domain.geofence import (
    Geofence,
    GeometryError,
    Neighbourhood,
    contains,
    parse_geometry,
    segment_crossing,
)
from processor.domain.timing import interpolate, replay
from tests.domain.course import DEVICE, ENTRY, LAT, START_LON, at, definition, fix, line, raw_rows

START = (START_LON, LAT - 0.01, START_LON, LAT + 0.01)


def test_straight_crossing_interpolates_to_the_millisecond() -> None:
    # 0.25 of the way from 13.99 to 14.03: 10 s * 0.25 = 2.5 s after the first fix.
    a, b = fix(0, 13.99), fix(10, 14.03)
    t = segment_crossing(a.x, a.y, b.x, b.y, [START])
    assert t == pytest.approx(0.25)
    assert interpolate(a, b, t) == at(2.5)
    a, b = fix(0.123, 13.999), fix(3.456, 14.002)  # odd instants: 0.123 + 3.333/3 = 1.234 s
    assert interpolate(a, b, segment_crossing(a.x, a.y, b.x, b.y, [START]) or -1) == at(1.234)


def test_shallow_angle_crossing() -> None:
    # The track crosses a diagonal line at 0.01 degrees: still one exact crossing.
    diagonal = (14.0, 45.0, 15.0, 45.01)  # slope 0.01
    x0, y0 = 14.2, 45.0020 - 0.0001
    x1, y1 = 14.6, 45.0060 + 0.0001  # slope ~0.0105: crosses near x = 14.4
    t = segment_crossing(x0, y0, x1, y1, [diagonal])
    assert t is not None
    # Exact: y_track(x) == y_line(x) solved by hand.
    slope = (y1 - y0) / (x1 - x0)
    x = (y0 - slope * x0 - 45.0 + 0.01 * 14.0) / (0.01 - slope)
    assert t == pytest.approx((x - x0) / (x1 - x0), abs=1e-9)
    # Parallel, a hair away, never touches.
    assert segment_crossing(14.1, 45.001 + 1e-6, 14.9, 45.009 + 1e-6, [diagonal]) is None


def test_fix_exactly_on_the_line_counts_once() -> None:
    d = definition()
    track = replay(d, DEVICE, [fix(0, 13.99), fix(10, START_LON), fix(20, 14.01)])
    assert track.records[(ENTRY, 1)].crossed_at == at(10)
    assert track.records[(ENTRY, 1)].source_ts == at(10)
    assert len(track.records) == 1
    # And segment-level: arriving on the line touches at t=1, leaving from it does not.
    assert segment_crossing(13.99, LAT, START_LON, LAT, [START]) == 1.0
    assert segment_crossing(START_LON, LAT, 14.01, LAT, [START]) is None


def test_fix_on_a_diagonal_line_despite_float_noise() -> None:
    """Fixes placed on a diagonal line by float arithmetic are a hair off it: the exact
    segment intersection misses most of them (t = 1 + 1e-13), the tolerance catches all,
    once, at the fix's time, and the segment leaving the line crosses nothing."""
    rows = raw_rows()
    diagonal = {"type": "LineString", "coordinates": [[14.0, 45.0], [14.3, 45.1]]}
    d = build_definition(raw_rows(geofences=[{**rows.geofences[0], "geometry": diagonal}]))
    for k in range(1, 50):
        x, y = 14.0 + 0.3 * k / 50, 45.0 + 0.1 * k / 50
        track = replay(
            d.definition,
            DEVICE,
            [fix(0, x + 0.001, y - 0.003), fix(7, x, y), fix(9, x - 0.001, y + 0.003)],
        )
        assert [r.crossed_at for r in track.records.values()] == [at(7)], k


def test_stopping_on_the_line_is_one_crossing() -> None:
    fixes = [fix(0, 13.99), fix(5, START_LON)] + [fix(5 + i, START_LON) for i in range(1, 5)]
    fixes += [fix(20, START_LON, LAT + 0.001), fix(30, 14.02)]  # creeping along it, then away
    track = replay(definition(), DEVICE, fixes)
    assert [r.crossed_at for r in track.records.values()] == [at(5)]


def test_back_and_forth_first_crossing_counts() -> None:
    fixes = [fix(0, 13.99), fix(10, 14.01), fix(20, 13.99), fix(30, 14.01)]
    track = replay(definition(), DEVICE, fixes)
    assert track.records[(ENTRY, 1)].crossed_at == at(5)


def test_zone_enter_exit_keeps_max_speed_inside() -> None:
    speeds = [(0, 14.065, 90.0), (10, 14.071, 48.0), (20, 14.075, 61.5), (30, 14.079, 52.0)]
    fixes = [fix(s, lon, speed=v) for s, lon, v in speeds] + [fix(40, 14.09, speed=120.0)]
    track = replay(definition(), DEVICE, fixes)
    [visit] = track.visits.values()
    assert (visit.entered_at, visit.exited_at, visit.max_speed_kmh) == (at(10), at(40), 61.5)


def test_zone_still_open_and_reentered() -> None:
    lons = [14.065, 14.075, 14.085, 14.075]
    track = replay(definition(), DEVICE, [fix(i * 10, lon) for i, lon in enumerate(lons)])
    visits = sorted(track.visits.values(), key=lambda v: v.entered_at)
    assert [(v.entered_at, v.exited_at) for v in visits] == [(at(10), at(20)), (at(30), None)]


@pytest.mark.parametrize(
    ("kind", "geometry", "reason"),
    [
        ("start", {"type": "Polygon", "coordinates": []}, "needs a LineString"),
        ("zone", line(14.0), "needs a Polygon"),
        ("start", {"type": "LineString", "coordinates": [[1, 2]]}, "unreadable|invalid"),
        ("start", {"type": "LineString", "coordinates": [[1, 2], [1, 2]]}, "no length|invalid"),
        ("start", {"type": "LineString", "coordinates": [[1, 200], [1, 2]]}, "outside"),
        ("bogus", line(14.0), "kind"),
        ("zone", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
         "invalid Polygon"),
        ("start", "nope", "not a GeoJSON object"),
    ],
)  # fmt: skip
def test_bad_geometry_is_refused(kind: str, geometry: object, reason: str) -> None:
    with pytest.raises(GeometryError, match=reason):
        parse_geometry(kind, geometry)


def test_bad_rows_are_skipped_and_listed() -> None:
    rows = raw_rows()
    bad = [
        {**rows.geofences[0], "id": 77, "geometry": {"type": "Point", "coordinates": [0, 0]}},
        {**rows.geofences[0], "id": 78, "stage_id": None},
    ]
    built = build_definition(raw_rows(geofences=[*rows.geofences, *bad]))
    assert sorted(r.id for r in built.rejected) == [77, 78]
    assert {g.id for g in built.definition.events[1].index.geofences} == {1, 2, 3, 4, 5}


def test_stage_window_excludes_crossings_outside_it() -> None:
    rows = raw_rows()
    stage = {**rows.stages[0], "opens_at": at(100), "closes_at": None}
    d = build_definition(raw_rows(stages=[stage])).definition
    early = replay(d, DEVICE, [fix(0, 13.99), fix(10, 14.01)])
    assert early.records == {}
    ok = replay(d, DEVICE, [fix(100, 13.99), fix(110, 14.01)])
    assert ok.records[(ENTRY, 1)].crossed_at == at(105)
    assert timedelta(0) == ok.records[(ENTRY, 1)].crossed_at - at(105)


def _meets(bounds: tuple[float, float, float, float], x0: float, y0: float, x1: float,
           y1: float) -> bool:  # fmt: skip
    minx, miny, maxx, maxy = bounds
    return (
        min(x0, x1) <= maxx and max(x0, x1) >= minx and min(y0, y1) <= maxy and max(y0, y1) >= miny
    )


coordinate = st.floats(-1.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), max_size=8),
    coordinate, coordinate, coordinate, coordinate,
)  # fmt: skip
def test_near_keeps_exactly_the_geofences_whose_envelope_meets_the_segments(
    boxes: list[tuple[float, float, float, float]], x0: float, y0: float, x1: float, y1: float
) -> None:
    """Touching counts (an envelope edge on the segment's), in either direction of travel."""

    def zone(i: int, a: float, b: float, c: float, d: float) -> Geofence:
        box = shapely.box(min(a, c), min(b, d), max(a, c), max(b, d))
        return Geofence(id=i, event_id=1, stage_id=None, kind="zone", name=f"z{i}",
                        sequence=0, speed_limit_kmh=None, shape=box)  # fmt: skip

    fences = tuple(zone(i, *box) for i, box in enumerate(boxes))
    around = Neighbourhood((-1.0, -1.0, 1.0, 1.0), fences)
    expected = [g for g in fences if _meets(g.bounds, x0, y0, x1, y1)]
    assert around.near(x0, y0, x1, y1) == expected
    assert around.near(x1, y1, x0, y0) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=6, unique=True),
    coordinate, coordinate,
)  # fmt: skip
def test_contains_answers_as_shapely_does_inside_and_outside_the_envelope(
    ring: list[tuple[float, float]], x: float, y: float
) -> None:
    """The envelope pre-test only ever says "outside" where the polygon has no point,
    border included; everything else is shapely's answer."""
    shape = shapely.Polygon(ring)
    if not shape.is_valid or shape.area == 0:
        shape = shape.convex_hull
    if shape.geom_type != "Polygon" or shape.area == 0:
        return
    shapely.prepare(shape)
    zone = Geofence(id=1, event_id=1, stage_id=None, kind="zone", name="z", sequence=0,
                    speed_limit_kmh=None, shape=shape)  # fmt: skip
    for px, py in [(x, y), *shape.exterior.coords]:  # the vertices: on the border
        assert contains(zone, px, py) is bool(shapely.intersects_xy(shape, px, py))
