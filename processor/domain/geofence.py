"""Geofence geometry: GeoJSON -> shapely, a per-event spatial index, and the crossing test.

Coordinates stay in degrees (x = longitude, y = latitude). That is exact for what we
compute: where along a fix-to-fix segment a line is crossed is a ratio, and ratios along a
straight segment survive any affine map, including the local metric projection; nothing
here measures distances except the on-the-line tolerance, which is far below GPS
resolution either way.

The crossing rule (``segment_crossing``): the segment from the previous valid fix to this
one *touches* the line, and the previous fix was not on the line. So a fix exactly on the
line counts once (on the segment that arrives there, at that fix's time), and a car
stopped on the line makes no further crossings. Touching is decided with a distance
tolerance, not with exact intersection, so shallow angles and float noise at the ends are
handled the same way.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import shapely  # type: ignore[import-untyped]

LINE_KINDS = frozenset({"start", "checkpoint", "finish"})
KINDS = LINE_KINDS | {"zone"}
# "On the line" tolerance: 1e-9 degrees is ~0.1 mm, two orders below the 1e-7 degree
# resolution of Teltonika coordinates, yet far above float noise for rally coordinates.
ON_LINE_EPS = 1e-9

Piece = tuple[float, float, float, float]
# A geofence's envelope (minx, miny, maxx, maxy) and the geofence itself.
Envelope = tuple[float, float, float, float, "Geofence"]


class GeometryError(ValueError):
    """A geofence whose geometry cannot be used; the message says why."""


@attrs.frozen(kw_only=True, eq=False)
class Geofence:
    """One geofence with its geometry ready for the hot path."""

    id: int
    event_id: int
    stage_id: int | None
    kind: str
    name: str
    sequence: int
    speed_limit_kmh: float | None
    shape: Any = attrs.field(repr=False)  # shapely geometry (prepared for zones)
    pieces: tuple[Piece, ...] = attrs.field(repr=False, default=())  # lines only
    bounds: tuple[float, float, float, float] = attrs.field(init=False, repr=False)
    # ``bounds`` and the geofence in one flat tuple: what ``Neighbourhood.near`` tests
    # per fix, built once here rather than per neighbourhood.
    envelope: Envelope = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        minx, miny, maxx, maxy = (float(v) for v in self.shape.bounds)
        object.__setattr__(self, "bounds", (minx, miny, maxx, maxy))
        object.__setattr__(self, "envelope", (minx, miny, maxx, maxy, self))

    @property
    def is_line(self) -> bool:
        return self.kind in LINE_KINDS


def parse_geometry(kind: str, geojson: Any) -> tuple[Any, tuple[Piece, ...]]:
    """Shapely geometry and line pieces for a GeoJSON ``geometry`` value of ``kind``."""
    if kind not in KINDS:
        raise GeometryError(f"kind {kind!r} is not start, checkpoint, finish or zone")
    if not isinstance(geojson, Mapping):
        raise GeometryError("geometry is not a GeoJSON object")
    expected = "Polygon" if kind == "zone" else "LineString"
    if geojson.get("type") != expected:
        raise GeometryError(f"a {kind} needs a {expected}, got {geojson.get('type')!r}")
    try:
        shape = shapely.geometry.shape(geojson)
    except (
        shapely.errors.ShapelyError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise GeometryError(f"unreadable {expected}: {exc}") from None
    if shape.is_empty:
        raise GeometryError("geometry is empty")
    coords = shapely.get_coordinates(shape)
    if not np.isfinite(coords).all():
        raise GeometryError("coordinates are not finite")
    if (np.abs(coords[:, 0]) > 180).any() or (np.abs(coords[:, 1]) > 90).any():
        raise GeometryError("coordinates are outside lon [-180, 180] / lat [-90, 90]")
    if not shape.is_valid:
        raise GeometryError(f"invalid {expected}: {shapely.is_valid_reason(shape)}")
    pieces: tuple[Piece, ...] = ()
    if kind != "zone":
        xy = [(float(x), float(y)) for x, y in coords]
        pieces = tuple((a[0], a[1], b[0], b[1]) for a, b in itertools.pairwise(xy) if a != b)
        if not pieces:
            raise GeometryError("line has no length")
    shapely.prepare(shape)
    return shape, pieces


def _point_piece_distance(px: float, py: float, piece: Piece) -> tuple[float, float]:
    """Distance from a point to a piece, and the point's parameter along the piece."""
    ax, ay, bx, by = piece
    ex, ey = bx - ax, by - ay
    length2 = ex * ex + ey * ey
    u = ((px - ax) * ex + (py - ay) * ey) / length2 if length2 else 0.0
    u = 0.0 if u < 0.0 else 1.0 if u > 1.0 else u
    return math.hypot(ax + u * ex - px, ay + u * ey - py), u


def on_line(x: float, y: float, pieces: Sequence[Piece]) -> bool:
    return any(_point_piece_distance(x, y, p)[0] <= ON_LINE_EPS for p in pieces)


def segment_crossing(
    x0: float, y0: float, x1: float, y1: float, pieces: Sequence[Piece]
) -> float | None:
    """Where along the fix segment (0..1) it first touches the line, or None.

    None also when the first fix is on the line: that touch was counted by the segment
    that arrived there.
    """
    if x0 == x1 and y0 == y1:
        return None
    if on_line(x0, y0, pieces):
        return None
    dx, dy = x1 - x0, y1 - y0
    seg = (x0, y0, x1, y1)
    best: float | None = None
    for piece in pieces:
        t = _touch(x0, y0, dx, dy, seg, piece)
        if t is not None and (best is None or t < best):
            best = t
    return best


def _touch(x0: float, y0: float, dx: float, dy: float, seg: Piece, piece: Piece) -> float | None:
    qx0, qy0, qx1, qy1 = piece
    ex, ey = qx1 - qx0, qy1 - qy0
    denom = dx * ey - dy * ex
    if denom != 0.0:
        wx, wy = qx0 - x0, qy0 - y0
        t = (wx * ey - wy * ex) / denom
        u = (wx * dy - wy * dx) / denom
        if 0.0 <= t <= 1.0 and 0.0 <= u <= 1.0:
            return t
    # No proper intersection (or parallel): touching within the tolerance still counts,
    # at the earliest point of the segment that is that close.
    candidates: list[float] = []
    if _point_piece_distance(seg[2], seg[3], piece)[0] <= ON_LINE_EPS:
        candidates.append(1.0)
    for qx, qy in ((qx0, qy0), (qx1, qy1)):
        distance, t = _point_piece_distance(qx, qy, seg)
        if distance <= ON_LINE_EPS:
            candidates.append(t)
    return min(candidates) if candidates else None


@attrs.frozen(eq=False)
class GeofenceIndex:
    """An STRtree over one event's geofences, and a grid in front of it for the boxes a
    track asks for: candidates by envelope, cost ~ the fences nearby, not the event's.

    The tracks' neighbourhood boxes are small and asked for often (every dozen fixes
    per car); one ``STRtree.query`` costs ~10 µs, most of it numpy wrapping a single
    box, which was ~15 % of the timing hot path (``python -m bench.domain``). A dict of
    ``_CELL_DEG`` cells answers those in a few lookups; a box wider than
    ``_GRID_QUERY_CELLS`` cells goes to the tree. Both give the same geofences
    (``tests/domain/test_index.py``).
    """

    geofences: tuple[Geofence, ...]
    _tree: Any = attrs.field(init=False, repr=False)
    _by_id: dict[int, Geofence] = attrs.field(init=False, repr=False)
    _grid: dict[tuple[int, int], list[int]] = attrs.field(init=False, repr=False)
    _wide: tuple[int, ...] = attrs.field(init=False, repr=False)  # in no cell: too big

    def __attrs_post_init__(self) -> None:
        tree = shapely.STRtree([g.shape for g in self.geofences])
        grid: dict[tuple[int, int], list[int]] = {}
        wide: list[int] = []
        for i, g in enumerate(self.geofences):
            x0, y0, x1, y1 = cells = _cells(g.bounds)
            if _count(cells) > _GRID_FENCE_CELLS:
                wide.append(i)
                continue
            for cx in range(x0, x1 + 1):
                for cy in range(y0, y1 + 1):
                    grid.setdefault((cx, cy), []).append(i)
        object.__setattr__(self, "_tree", tree)
        object.__setattr__(self, "_by_id", {g.id: g for g in self.geofences})
        object.__setattr__(self, "_grid", grid)
        object.__setattr__(self, "_wide", tuple(wide))

    def get(self, geofence_id: int) -> Geofence | None:
        return self._by_id.get(geofence_id)

    def around(self, x: float, y: float, margin: float) -> Neighbourhood:
        """The geofences near a point, for a track to reuse while it stays in the box
        (one lookup per box instead of one per fix: a car at 150 km/h with a fix every
        5 s crosses a ``NEIGHBOURHOOD_DEG`` box in a dozen fixes)."""
        box = (x - margin, y - margin, x + margin, y + margin)
        if not self.geofences:
            return Neighbourhood(box, ())
        x0, y0, x1, y1 = cells = _cells(box)
        if _count(cells) > _GRID_QUERY_CELLS:
            return self.tree_around(box)
        grid = self._grid
        hits = set(self._wide)
        for cx in range(x0, x1 + 1):
            for cy in range(y0, y1 + 1):
                hits.update(grid.get((cx, cy), ()))
        candidates = Neighbourhood(box, tuple(self.geofences[i] for i in sorted(hits)))
        # The cells hold every fence near the box; ``near`` keeps those whose envelope
        # meets it (the box's own corners are its envelope).
        return Neighbourhood(box, tuple(candidates.near(*box)))

    def tree_around(self, box: tuple[float, float, float, float]) -> Neighbourhood:
        """``around`` by the STRtree (envelopes that meet the box), for any box."""
        hits = self._tree.query(shapely.box(*box))
        return Neighbourhood(box, tuple(self.geofences[i] for i in sorted(hits.tolist())))


# A geofence over more cells than this is a candidate everywhere (a zone the size of a
# region), so the grid stays small; a query over more cells than this uses the tree.
_GRID_FENCE_CELLS = 64
_GRID_QUERY_CELLS = 16


def _count(cells: tuple[int, int, int, int]) -> int:
    x0, y0, x1, y1 = cells
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def _cells(bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    minx, miny, maxx, maxy = bounds
    return (
        math.floor(minx / _CELL_DEG),
        math.floor(miny / _CELL_DEG),
        math.floor(maxx / _CELL_DEG),
        math.floor(maxy / _CELL_DEG),
    )


# Half-size of the box a track caches its nearby geofences for: ~2.2 km in latitude.
NEIGHBOURHOOD_DEG = 0.02
# Grid cells: twice a neighbourhood's half-size, so a box a track asks for meets 1-4.
_CELL_DEG = 2 * NEIGHBOURHOOD_DEG


_ENVELOPE = operator.attrgetter("envelope")


@attrs.frozen(slots=True)
class Neighbourhood:
    box: tuple[float, float, float, float]
    geofences: tuple[Geofence, ...]
    _envelopes: tuple[Envelope, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_envelopes", tuple(map(_ENVELOPE, self.geofences)))

    def covers(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        minx, miny, maxx, maxy = self.box
        return (
            minx <= x0 <= maxx and minx <= x1 <= maxx and miny <= y0 <= maxy and miny <= y1 <= maxy
        )

    def near(self, x0: float, y0: float, x1: float, y1: float) -> list[Geofence]:
        """Geofences whose envelope meets the segment's (the segment must be covered):
        a cheap pre-test before any geometry. It runs for every fix against each nearby
        geofence, so the segment's envelope is taken once and the test is inline."""
        lox, hix = (x0, x1) if x0 <= x1 else (x1, x0)
        loy, hiy = (y0, y1) if y0 <= y1 else (y1, y0)
        return [
            g
            for minx, miny, maxx, maxy, g in self._envelopes
            if minx <= hix and maxx >= lox and miny <= hiy and maxy >= loy
        ]


def contains(zone: Geofence, x: float, y: float) -> bool:
    """Point in (or on the border of) a zone polygon; the shape is prepared.

    A point outside the zone's envelope is outside the zone: that answer costs four
    comparisons instead of a call into shapely (~2 µs, most of what a zone costs a fix)."""
    minx, miny, maxx, maxy = zone.bounds
    if not (minx <= x <= maxx and miny <= y <= maxy):
        return False
    return bool(shapely.intersects_xy(zone.shape, x, y))
