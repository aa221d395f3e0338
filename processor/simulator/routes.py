"""Routes the simulated cars drive: real GPX recordings plus synthetic loops.

Real tracks bring what synthetic lines lack (tight turns, hairpins, irregular spacing,
real altitude), which is what the race-domain code must cope with; synthetic loops add
longer, faster roads in rally country and any number of distinct routes. A ``Route`` is a
polyline measured in metres, so a device only has to know how far along it it is.

Closed tracks (end near the start) are driven round and round; open ones there and back,
so a device never jumps from the end to the start.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final, Literal

import attrs

from processor.simulator import geo

BUNDLED_TRACKS: Final = Path(__file__).resolve().parent / "tracks"
# A track whose ends are this close is a loop: the closing stretch is a plausible road.
_CLOSED_WITHIN_M: Final = 250.0
# GPS jitter at a standstill: points closer than this add nothing but zero-length legs.
_MIN_LEG_M: Final = 0.5
# Where synthetic loops are laid out: rally-raid country (Albania, Morocco, Saudi Arabia).
_REGIONS: Final = ((41.10, 20.05), (31.10, -4.00), (24.40, 45.50))

RouteSource = Literal["mixed", "gpx", "synthetic"]
Point = tuple[float, float, float]  # latitude, longitude, altitude (m)


class RouteError(Exception):
    """A GPX file cannot be used as a route (unreadable, or fewer than two points)."""


@attrs.frozen
class Route:
    """A polyline with cumulative distances; ``locate`` maps metres driven to a point."""

    name: str
    points: tuple[Point, ...]
    closed: bool
    cumulative: tuple[float, ...] = attrs.field(init=False)

    @cumulative.default
    def _measure(self) -> tuple[float, ...]:
        pts = (*self.points, self.points[0]) if self.closed else self.points
        total = [0.0]
        for (la1, lo1, _), (la2, lo2, _) in itertools.pairwise(pts):
            total.append(total[-1] + geo.distance_m(la1, lo1, la2, lo2))
        return tuple(total)

    @property
    def length_m(self) -> float:
        return self.cumulative[-1]

    def locate(self, travelled_m: float) -> Point:
        """The point ``travelled_m`` metres along: round a loop, or there and back."""
        length = self.length_m
        if self.closed:
            d = travelled_m % length
        else:
            d = travelled_m % (2 * length)
            d = d if d <= length else 2 * length - d
        i = min(bisect.bisect_right(self.cumulative, d) - 1, len(self.cumulative) - 2)
        leg = self.cumulative[i + 1] - self.cumulative[i]
        f = (d - self.cumulative[i]) / leg if leg > 0 else 0.0
        la1, lo1, al1 = self.points[i]
        la2, lo2, al2 = self.points[(i + 1) % len(self.points)]
        return (la1 + (la2 - la1) * f, lo1 + (lo2 - lo1) * f, al1 + (al2 - al1) * f)


def load_gpx(path: Path) -> Route:
    """All track and route points of a GPX file (1.0 or 1.1), in file order, as one route."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise RouteError(f"{path}: {exc}") from None
    points: list[Point] = []
    altitude = 0.0
    for element in root.iter():
        if _local(element.tag) not in ("trkpt", "rtept"):
            continue
        for child in element:
            if _local(child.tag) == "ele" and child.text:
                altitude = float(child.text)
        lat, lon = float(element.get("lat", "nan")), float(element.get("lon", "nan"))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RouteError(f"{path}: point without a valid lat/lon")
        if points and geo.distance_m(*points[-1][:2], lat, lon) < _MIN_LEG_M:
            continue
        points.append((lat, lon, altitude))
    if len(points) < 2:
        raise RouteError(f"{path}: fewer than two distinct track points")
    closed = geo.distance_m(*points[0][:2], *points[-1][:2]) <= _CLOSED_WITHIN_M
    return Route(name=path.stem, points=tuple(points), closed=closed)


def load_tracks(directory: Path) -> list[Route]:
    """Every ``*.gpx`` in a directory, sorted by name so a seed means the same routes."""
    routes = [load_gpx(path) for path in sorted(directory.glob("*.gpx"))]
    if not routes:
        raise RouteError(f"{directory}: no .gpx files")
    return routes


def synthetic_loop(rng: random.Random, name: str) -> Route:
    """A wobbly closed loop, 15-60 km round, with rolling altitude, in rally country."""
    base_lat, base_lon = rng.choice(_REGIONS)
    lat0 = base_lat + rng.uniform(-0.3, 0.3)
    lon0 = base_lon + rng.uniform(-0.3, 0.3)
    radius = rng.uniform(2_500.0, 9_500.0)
    harmonics = [(k, rng.uniform(0.02, 0.12), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 7)]
    alt0, alt_phase = rng.uniform(50.0, 900.0), rng.uniform(0, 2 * math.pi)
    points: list[Point] = []
    n = 240
    for i in range(n):
        theta = 2 * math.pi * i / n
        r = radius * (1 + sum(a * math.sin(k * theta + p) for k, a, p in harmonics))
        lat, lon = geo.destination(lat0, lon0, math.degrees(theta), r)
        alt = alt0 + 80 * math.sin(2 * theta + alt_phase) + 25 * math.sin(9 * theta)
        points.append((lat, lon, alt))
    return Route(name=name, points=tuple(points), closed=True)


def build_routes(
    source: RouteSource, *, seed: int, tracks: Path = BUNDLED_TRACKS, synthetic: int = 4
) -> list[Route]:
    """The route set for a run: GPX tracks, then ``synthetic`` loops drawn from ``seed``."""
    routes = load_tracks(tracks) if source in ("mixed", "gpx") else []
    if source in ("mixed", "synthetic"):
        rng = random.Random(seed)
        routes += [synthetic_loop(rng, f"loop-{i + 1}") for i in range(max(1, synthetic))]
    return routes


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]
