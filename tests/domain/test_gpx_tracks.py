"""Real recorded tracks (Garmin, irregular intervals, stops and turns): a line across the
track at a fix-to-fix segment is crossed once, between the two surrounding fixes, at the
interpolated time; zones around the track see every visit; a whole stage laid across a
track comes out the same live, in any delivery order, as in an in-order replay."""

from __future__ import annotations

import itertools
import math
import pathlib
import random
import xml.etree.ElementTree as ET
from datetime import datetime

import msgspec
import pytest
import shapely  # type: ignore[import-untyped]

from processor.domain.definition import build_definition
from processor.domain.geofence import segment_crossing
from processor.domain.live import LiveEngine
from processor.domain.timing import EPOCH, Fix, replay
from tests.domain.course import raw_rows
from tests.domain.model_store import ModelStore, position_of

TRACKS = pathlib.Path("/work/shared/data/tracks")


def read_gpx(path: pathlib.Path) -> list[Fix]:
    fixes: list[Fix] = []
    for el in ET.parse(path).iter():
        if not el.tag.endswith("trkpt"):
            continue
        when = next((c.text for c in el if c.tag.endswith("time")), None)
        if when is None:
            continue
        ts = datetime.fromisoformat(when.replace("Z", "+00:00"))
        t_us = (ts - EPOCH) // EPOCH.resolution
        if fixes and t_us <= fixes[-1].t_us:
            continue
        fixes.append(Fix(ts, t_us, float(el.attrib["lon"]), float(el.attrib["lat"]), 0.0))
    return fixes


def perpendicular_line(a: Fix, b: Fix) -> dict[str, object]:
    """A short line through the midpoint of a -> b, across it, a fifth of its length."""
    mx, my = (a.x + b.x) / 2, (a.y + b.y) / 2
    dx, dy = b.x - a.x, b.y - a.y
    norm = (dx * dx + dy * dy) ** 0.5
    half = norm / 10
    nx, ny = -dy / norm * half, dx / norm * half
    return {"type": "LineString", "coordinates": [[mx - nx, my - ny], [mx + nx, my + ny]]}


@pytest.mark.parametrize("name", ["around-visnjan-with-car.gpx", "cerknicko-jezero.gpx"])
def test_line_across_a_real_track(name: str) -> None:
    fixes = read_gpx(TRACKS / name)
    assert len(fixes) > 50
    checked = 0
    for i in range(5, len(fixes) - 5, max(1, len(fixes) // 12)):
        a, b = fixes[i], fixes[i + 1]
        if abs(b.x - a.x) + abs(b.y - a.y) < 1e-4:
            continue  # standing still: no segment to put a line across
        rows = raw_rows(("gpx",))
        fence = {**rows.geofences[0], "geometry": perpendicular_line(a, b)}
        built = build_definition(raw_rows(("gpx",), geofences=[fence]))
        assert built.rejected == []
        # The fixes around the segment (the whole track may pass the spot again: out and
        # back roads; there the first crossing counts, checked against a brute force below).
        track = replay(built.definition, "gpx", fixes[i - 5 : i + 6])
        [crossing] = track.records.values()
        whole = replay(built.definition, "gpx", fixes)
        [first] = whole.records.values()
        pieces = built.definition.events[1].index.geofences[0].pieces
        brute = next(
            j for j in range(len(fixes) - 1)
            if segment_crossing(fixes[j].x, fixes[j].y, fixes[j + 1].x, fixes[j + 1].y, pieces)
            is not None
        )  # fmt: skip
        assert first.source_ts == fixes[brute + 1].ts
        assert a.ts <= crossing.crossed_at <= b.ts
        assert crossing.source_ts == b.ts
        midpoint_us = a.t_us + (b.t_us - a.t_us) // 2
        assert abs((crossing.crossed_at - EPOCH) // EPOCH.resolution - midpoint_us) <= 1000
        checked += 1
    assert checked >= 5


def with_speeds(fixes: list[Fix]) -> list[Fix]:
    """GPX has no speed: each fix gets the average speed since the fix before (km/h)."""
    out = [msgspec.structs.replace(fixes[0], speed=0.0)]
    for a, b in itertools.pairwise(fixes):
        metres = math.hypot(
            (b.x - a.x) * 111_320 * math.cos(math.radians(a.y)), (b.y - a.y) * 110_540
        )
        out.append(msgspec.structs.replace(b, speed=metres / ((b.t_us - a.t_us) / 1e6) * 3.6))
    return out


def square(x: float, y: float, half: float) -> dict[str, object]:
    ring = [[x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


@pytest.mark.parametrize("name", ["around-visnjan-with-car.gpx", "cerknicko-jezero.gpx"])
def test_zones_on_a_real_track(name: str) -> None:
    """Squares of ~100-400 m around fixes along the track: every visit (entered at the
    first fix inside, left at the first fix outside, top speed of the fixes inside) as a
    plain walk over the fixes with shapely finds it, revisits included."""
    fixes = with_speeds(read_gpx(TRACKS / name))
    rows = raw_rows(("gpx",))
    zones, shapes = [], {}
    for n, i in enumerate(range(3, len(fixes) - 3, max(1, len(fixes) // 9))):
        half = (0.001, 0.002, 0.004)[n % 3]
        geometry = square(fixes[i].x, fixes[i].y, half)
        zones.append({**rows.geofences[2], "id": 50 + n, "geometry": geometry})
        shapes[50 + n] = shapely.geometry.shape(geometry)
    built = build_definition(raw_rows(("gpx",), geofences=zones))
    assert built.rejected == []
    track = replay(built.definition, "gpx", fixes)

    expected: list[tuple[int, datetime, datetime | None, float]] = []
    for zone_id, shape in shapes.items():
        entered: Fix | None = None
        top = 0.0
        for f in fixes:
            inside = shape.intersects(shapely.geometry.Point(f.x, f.y))
            if inside and entered is None:
                entered, top = f, f.speed
            elif inside:
                top = max(top, f.speed)
            elif entered is not None:
                expected.append((zone_id, entered.ts, f.ts, top))
                entered = None
        if entered is not None:
            expected.append((zone_id, entered.ts, None, top))
    got = [
        (v.geofence_id, v.entered_at, v.exited_at, v.max_speed_kmh) for v in track.visits.values()
    ]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert len(expected) >= len(shapes)  # each square is around a fix: visited at least once
    assert any(top > 20 for *_, top in expected)  # speeds are real ones, not zeros


@pytest.mark.parametrize("name", ["around-visnjan-with-car.gpx", "cerknicko-jezero.gpx"])
def test_a_stage_on_a_real_track_live_in_any_order_equals_replay(name: str) -> None:
    """A start, three checkpoints and a finish across the real track, delivered in shuffled
    batches with stragglers and a restart: the live path writes what an in-order replay
    writes, and the stage comes out finished with every checkpoint."""
    fixes = with_speeds(read_gpx(TRACKS / name))
    moving = [
        i for i in range(2, len(fixes) - 2)
        if abs(fixes[i + 1].x - fixes[i].x) + abs(fixes[i + 1].y - fixes[i].y) > 1e-4
    ]  # fmt: skip
    picks = [moving[len(moving) * k // 10] for k in (1, 3, 5, 7, 9)]
    rows = raw_rows(("gpx",))
    fences = []
    for n, i in enumerate(picks):
        kind = "start" if n == 0 else "finish" if n == len(picks) - 1 else "checkpoint"
        geometry = perpendicular_line(fixes[i], fixes[i + 1])
        fences.append({**rows.geofences[0], "id": n + 1, "kind": kind, "sequence": n,
                       "geometry": geometry})  # fmt: skip
    middle = fixes[moving[len(moving) * 6 // 10]]
    fences.append({**rows.geofences[2], "id": 9, "geometry": square(middle.x, middle.y, 0.002)})
    built = build_definition(raw_rows(("gpx",), geofences=fences))
    assert built.rejected == []
    d = built.definition

    expected = ModelStore()
    expected.apply(replay(d, "gpx", fixes).snapshot())
    [result] = expected.results.values()
    assert (result.status, result.checkpoints_passed, result.checkpoints_total) == (
        "finished", 3, 3,
    )  # fmt: skip
    for record in expected.records.values():
        after = next(f for f in fixes if f.ts == record.source_ts)
        before = fixes[fixes.index(after) - 1]
        assert before.ts <= record.crossed_at <= after.ts

    rng = random.Random(name)
    for _ in range(20):
        order = list(fixes)
        for _ in range(len(order) // 10):  # stragglers: a few fixes arrive much later
            order.append(order.pop(rng.randrange(len(order))))
        if rng.random() < 0.3:
            rng.shuffle(order)
        live, engine, stored = ModelStore(), LiveEngine(d), []
        while order:
            size = rng.randint(1, 30)
            batch, order = order[:size], order[size:]
            if rng.random() < 0.1:
                engine = LiveEngine(d)  # a restart: all hot state lost
            stored.extend(batch)
            ingested = engine.ingest([position_of("gpx", f) for f in batch])
            for update in ingested.updates:
                live.apply(update)
            for dev in ingested.recompute:
                live.apply(engine.recomputed(dev, sorted(stored, key=lambda f: f.t_us)))
        assert live.rows() == expected.rows()
