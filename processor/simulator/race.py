"""The race that matches a simulation: event, entries, stages and geofences on its routes.

So the whole stack demos end to end (timing records, stage results, live timing frames),
``processor simulate --create-race`` writes, into the Directus race tables, an event with
one entry per simulated device and one stage per route: a start line, a checkpoint and a
finish line laid across the route at 10%, 50% and 90% of its length, and a speed-control
zone at 30%. The layout is pure (``race_layout``) so tests check the geometry without a
database; ``create_race`` writes it with plain psycopg (the simulator is a sync tool).

Development and demo only: in production Directus owns these tables. When they are
missing, the SQL fixture (``schema/directus/race_tables.sql``) creates them.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import random
from typing import Any

import attrs
import orjson
import psycopg

from processor.simulator import geo
from processor.simulator.devices import make_device
from processor.simulator.generator import Plan
from processor.simulator.routes import Route

# Where the lines and the zone sit along a route, as fractions of its length.
LINES = (("start", 0, 0.10), ("checkpoint", 1, 0.50), ("finish", 9, 0.90))
ZONE_AT = 0.30
LINE_HALF_WIDTH_M = 40.0  # a line 80 m across the road: no car passes beside it
ZONE_HALF_SIDE_M = 120.0
ZONE_SPEED_LIMIT_KMH = 50.0


@attrs.frozen
class Fence:
    kind: str
    sequence: int
    geometry: dict[str, Any]  # GeoJSON, [lon, lat] order
    speed_limit_kmh: float | None = None


@attrs.frozen
class StageLayout:
    name: str
    sequence: int
    fences: tuple[Fence, ...]


@attrs.frozen
class RaceLayout:
    name: str
    devices: tuple[tuple[str, str], ...]  # (imei, model), in device order
    stages: tuple[StageLayout, ...]
    device_stage: tuple[int, ...]  # index into stages for each device (its route)


def race_layout(plan: Plan) -> RaceLayout:
    """The race for ``plan``: the same IMEIs ``generate`` uses, one stage per route used."""
    serial_base = random.Random(f"{plan.seed}:fleet").randrange(1_000_000)
    devices = []
    for index in range(plan.devices):
        device = make_device(index, random.Random(f"{plan.seed}:device:{index}"), serial_base)
        devices.append((device.imei, device.model))
    used = plan.routes[: min(len(plan.routes), plan.devices)]
    stages = tuple(
        StageLayout(f"SS{i + 1} {route.name}", i + 1, _fences(route))
        for i, route in enumerate(used)
    )
    return RaceLayout(
        name=f"Simulated rally (seed {plan.seed})",
        devices=tuple(devices),
        stages=stages,
        device_stage=tuple(i % len(used) for i in range(plan.devices)),
    )


def _fences(route: Route) -> tuple[Fence, ...]:
    fences = [
        Fence(kind, sequence, _line_across(route, share * route.length_m))
        for kind, sequence, share in LINES
    ]
    lat, lon, _ = route.locate(ZONE_AT * route.length_m)
    fences.append(Fence("zone", 0, _square(lat, lon), ZONE_SPEED_LIMIT_KMH))
    return tuple(fences)


def _line_across(route: Route, at_m: float) -> dict[str, Any]:
    """A line perpendicular to the route's heading at ``at_m``, centred on the road."""
    lat, lon, _ = route.locate(at_m)
    ahead_lat, ahead_lon, _ = route.locate(at_m + 5.0)
    heading = geo.bearing_deg(lat, lon, ahead_lat, ahead_lon)
    ends = [geo.destination(lat, lon, heading + side, LINE_HALF_WIDTH_M) for side in (90, -90)]
    return {"type": "LineString", "coordinates": [[lo, la] for la, lo in ends]}


def _square(lat: float, lon: float) -> dict[str, Any]:
    north, _ = geo.destination(lat, lon, 0, ZONE_HALF_SIDE_M)
    south, _ = geo.destination(lat, lon, 180, ZONE_HALF_SIDE_M)
    _, east = geo.destination(lat, lon, 90, ZONE_HALF_SIDE_M)
    _, west = geo.destination(lat, lon, 270, ZONE_HALF_SIDE_M)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def race_tables_sql() -> str:
    packaged = importlib.resources.files("processor") / "_schema" / "directus" / "race_tables.sql"
    if isinstance(packaged, pathlib.Path) and packaged.is_file():
        return packaged.read_text()
    repo = pathlib.Path(__file__).resolve().parents[2] / "schema" / "directus" / "race_tables.sql"
    return repo.read_text()


def create_race(postgres_url: str, layout: RaceLayout) -> int:
    """Write the race (one transaction); returns the event id. Devices are upserted."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(race_tables_sql())
        with conn.transaction():
            # A rerun with the same seed replaces the previous simulated race.
            conn.execute(
                "UPDATE events SET status = 'finished' WHERE name = %s AND status = 'live'",
                (layout.name,),
            )
            event = _one(
                conn,
                "INSERT INTO events (name, status, starts_at)"
                " VALUES (%s, 'live', now() - interval '1 day') RETURNING id",
                layout.name,
            )
            stage_ids = [
                _one(
                    conn,
                    "INSERT INTO stages (event_id, name, sequence) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    event,
                    stage.name,
                    stage.sequence,
                )
                for stage in layout.stages
            ]
            for stage, stage_id in zip(layout.stages, stage_ids, strict=True):
                for fence in stage.fences:
                    conn.execute(
                        "INSERT INTO geofences (event_id, stage_id, kind, name, sequence,"
                        " geometry, speed_limit_kmh) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (
                            event,
                            stage_id,
                            fence.kind,
                            f"{stage.name} {fence.kind}",
                            fence.sequence,
                            orjson.dumps(fence.geometry).decode(),
                            fence.speed_limit_kmh,
                        ),
                    )
            for number, (imei, model) in enumerate(layout.devices, start=1):
                device = _one(
                    conn,
                    "INSERT INTO devices (imei, model, label) VALUES (%s, %s, %s)"
                    " ON CONFLICT (imei) DO UPDATE SET model = EXCLUDED.model"
                    " RETURNING id",
                    imei,
                    model,
                    f"car {number}",
                )
                conn.execute(
                    "INSERT INTO entries (event_id, device_id, number, crew)"
                    " VALUES (%s, %s, %s, %s)",
                    (event, device, str(number), f"crew {number}"),
                )
    return event


def _one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def describe(layout: RaceLayout, event_id: int) -> str:
    return (
        f"race: event {event_id} '{layout.name}', {len(layout.devices)} entries, "
        f"{len(layout.stages)} stages (start, checkpoint, finish and a zone each)"
    )
