"""``processor simulate --create-race``: a race laid across the simulated routes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import psycopg
from shapely.geometry import LineString, Polygon, shape

from processor import config
from processor.domain.definition import RawRows, build_definition
from processor.simulator.generator import Plan, generate
from processor.simulator.race import create_race, race_layout
from processor.simulator.routes import build_routes


def _plan(devices: int = 6) -> Plan:
    return Plan(routes=build_routes("mixed", seed=3), devices=devices, seed=3)


def test_lines_cross_their_route_and_zones_cover_it() -> None:
    plan = _plan()
    layout = race_layout(plan)
    assert len(layout.stages) == min(len(plan.routes), plan.devices)
    for stage, route in zip(layout.stages, plan.routes, strict=False):
        road = LineString([(lon, lat) for lat, lon, _ in route.points])
        kinds = [f.kind for f in stage.fences]
        assert kinds == ["start", "checkpoint", "finish", "zone"]
        for fence in stage.fences:
            geometry = shape(fence.geometry)
            assert geometry.is_valid
            if fence.kind == "zone":
                assert isinstance(geometry, Polygon)
                assert geometry.intersects(road)
            else:
                assert isinstance(geometry, LineString)
                assert geometry.crosses(road) or geometry.intersects(road)


def test_entries_are_the_devices_the_simulator_publishes() -> None:
    plan = _plan()
    layout = race_layout(plan)
    published = {r.device_id for r in itertools.islice(generate(plan, datetime.now(UTC)), 500)}
    assert {imei for imei, _ in layout.devices} == published


def test_created_race_loads_without_rejected_rows(settings: config.Settings) -> None:
    layout = race_layout(_plan())
    event = create_race(settings.postgres_url, layout)
    with psycopg.connect(settings.postgres_url) as conn:
        conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
        raw = RawRows(
            events=conn.execute("SELECT * FROM events WHERE id = %s", (event,)).fetchall(),
            devices=conn.execute("SELECT * FROM devices").fetchall(),
            entries=conn.execute(
                "SELECT e.*, d.imei FROM entries e JOIN devices d ON d.id = e.device_id"
                " WHERE e.event_id = %s",
                (event,),
            ).fetchall(),
            stages=conn.execute("SELECT * FROM stages WHERE event_id = %s", (event,)).fetchall(),
            geofences=conn.execute(
                "SELECT * FROM geofences WHERE event_id = %s", (event,)
            ).fetchall(),
        )
    again = create_race(settings.postgres_url, layout)
    with psycopg.connect(settings.postgres_url) as conn:
        [(status,)] = conn.execute("SELECT status FROM events WHERE id = %s", (event,)).fetchall()
        conn.execute("UPDATE events SET status = 'finished' WHERE id = %s", (again,))
    assert again != event
    assert status == "finished"  # a rerun replaces the previous simulated race
    built = build_definition(raw)
    assert built.rejected == []
    assert len(raw.entries) == 6
    assert len(raw.geofences) == 4 * len(layout.stages)
    assert {str(imei) for imei, _ in layout.devices} <= set(built.definition.entries_by_device)
