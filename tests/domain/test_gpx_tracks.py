"""Real recorded tracks: a line across the track at a fix-to-fix segment is crossed once,
between the two surrounding fixes, at the interpolated time."""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from processor.domain.definition import build_definition
from processor.domain.geofence import segment_crossing
from processor.domain.timing import EPOCH, Fix, replay
from tests.domain.course import raw_rows

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
