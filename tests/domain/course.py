"""Synthetic race definitions for domain tests: a stage running east along latitude 45.

Lines are north-south segments across the road at fixed longitudes, so a fix's
longitude says exactly where it is along the stage and crossing times are analytic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from processor.domain.definition import RaceDefinition, RawRows, build_definition
from processor.domain.timing import EPOCH, Fix

T0 = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)
LAT = 45.0
DEVICE = "356307042441013"
EVENT, STAGE, ENTRY = 1, 10, 100
START_LON, FINISH_LON = 14.0, 14.1
CHECKPOINT_LONS = (14.03, 14.06)
ZONE = (14.07, 14.08)  # lon span of a speed zone across the road


def line(lon: float, half: float = 0.01) -> dict[str, Any]:
    return {"type": "LineString", "coordinates": [[lon, LAT - half], [lon, LAT + half]]}


def box(lon0: float, lon1: float, half: float = 0.01) -> dict[str, Any]:
    ring = [[lon0, LAT - half], [lon1, LAT - half], [lon1, LAT + half], [lon0, LAT + half]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def geofence_rows(event_id: int = EVENT, stage_id: int = STAGE) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        _fence(1, event_id, stage_id, "start", 0, line(START_LON)),
        _fence(4, event_id, stage_id, "finish", 9, line(FINISH_LON)),
        _fence(5, event_id, None, "zone", 0, box(*ZONE), speed_limit_kmh=50.0),
    ]
    for i, lon in enumerate(CHECKPOINT_LONS):
        rows.append(_fence(2 + i, event_id, stage_id, "checkpoint", 1 + i, line(lon)))
    return rows


def _fence(
    id_: int, event_id: int, stage_id: int | None, kind: str, seq: int, geometry: Any, **more: Any
) -> dict[str, Any]:
    return {
        "id": id_,
        "event_id": event_id,
        "stage_id": stage_id,
        "kind": kind,
        "name": f"{kind}-{id_}",
        "sequence": seq,
        "geometry": geometry,
        "speed_limit_kmh": more.get("speed_limit_kmh"),
    }


def raw_rows(devices: Sequence[str] = (DEVICE,), **overrides: Any) -> RawRows:
    values: dict[str, Any] = dict(
        events=[
            {"id": EVENT, "name": "Rally", "status": "live", "starts_at": None, "ends_at": None}
        ],
        devices=[{"id": i + 1, "imei": d, "model": "FMB920"} for i, d in enumerate(devices)],
        entries=[
            {"id": ENTRY + i, "event_id": EVENT, "imei": d, "number": str(i + 1)}
            for i, d in enumerate(devices)
        ],
        stages=[
            {
                "id": STAGE,
                "event_id": EVENT,
                "name": "SS1",
                "sequence": 1,
                "opens_at": None,
                "closes_at": None,
            }
        ],
        geofences=geofence_rows(),
        io_mappings=[],
    )
    values.update(overrides)
    return RawRows(**values)


def definition(devices: Sequence[str] = (DEVICE,), **overrides: Any) -> RaceDefinition:
    built = build_definition(raw_rows(devices, **overrides))
    assert built.rejected == []
    return built.definition


def fix(seconds: float, lon: float, lat: float = LAT, speed: float = 100.0) -> Fix:
    ts = T0 + timedelta(seconds=seconds)
    return Fix(
        ts,
        (ts - EPOCH) // timedelta(microseconds=1),
        lon,
        lat,
        speed,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
