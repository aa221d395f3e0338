"""Race-domain cost per fix on the hot path: IO mapping + live timing engine.

200 geofences (one event: 150 lines across a 1.5-degree stage, 50 zones) and 1,000
devices each carrying an entry; every device drives east at ~150 km/h with a fix every
5 s. Measures ``IoEnricher.derive`` and ``LiveEngine.ingest`` (tracks warm, in-order
fixes, batches of 1,000), no I/O. Run: ``python bench/domain.py``.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

from processor.core.model import Position
from processor.domain.definition import RawRows, build_definition
from processor.domain.live import LiveEngine
from processor.domain.plugin import Definitions, IoEnricher

T0 = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)
DEVICES, LINES, ZONES, STEPS = 1_000, 150, 50, 30


def definition() -> RawRows:
    fences = []
    for i in range(LINES):
        lon = 14.0 + i * 0.01
        kind = "start" if i == 0 else "finish" if i == LINES - 1 else "checkpoint"
        fences.append(
            {
                "id": i + 1,
                "event_id": 1,
                "stage_id": 1,
                "kind": kind,
                "name": "",
                "sequence": i,
                "speed_limit_kmh": None,
                "geometry": {"type": "LineString", "coordinates": [[lon, 44.9], [lon, 45.1]]},
            }
        )
    for j in range(ZONES):
        lon = 14.005 + j * 0.03
        ring = [
            [lon, 44.95],
            [lon + 0.004, 44.95],
            [lon + 0.004, 45.05],
            [lon, 45.05],
            [lon, 44.95],
        ]
        fences.append(
            {
                "id": 1000 + j,
                "event_id": 1,
                "stage_id": None,
                "kind": "zone",
                "name": "",
                "sequence": 0,
                "speed_limit_kmh": 50.0,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    imeis = [f"35630704{i:07d}" for i in range(DEVICES)]
    return RawRows(
        events=[{"id": 1, "name": "b", "status": "live", "starts_at": None, "ends_at": None}],
        devices=[{"id": i, "imei": d, "model": "FMB920"} for i, d in enumerate(imeis)],
        entries=[{"id": i, "event_id": 1, "imei": d, "number": ""} for i, d in enumerate(imeis)],
        stages=[{"id": 1, "event_id": 1, "name": "SS", "sequence": 1, "opens_at": None,
                 "closes_at": None}],
        geofences=fences,
    )  # fmt: skip


def position(device: str, step: int, offset: float) -> Position:
    return Position(
        device_id=device, ts=T0 + timedelta(seconds=5 * step), latitude=45.0 + offset,
        longitude=13.99 + step * 0.0029 + offset, altitude=100.0, heading=90.0, speed=150.0,
        satellites=12, priority=0, event_io_id=0, fix_valid=True,
        attributes={"239": 1, "240": 1, "66": 12850, "16": 1234567, "21": 4, "181": 9},
    )  # fmt: skip


def main() -> None:
    built = build_definition(definition())
    assert not built.rejected, built.rejected
    engine = LiveEngine(built.definition)
    enricher = IoEnricher(Definitions(built.definition))
    rng = random.Random(1)
    devices = sorted(built.definition.entries_by_device)
    offsets = {d: rng.uniform(-0.002, 0.002) for d in devices}
    for d in devices:  # warm tracks, as after the first (cold) record of each device
        engine.recomputed(d, [])
    batches = [[position(d, s, offsets[d]) for d in devices] for s in range(STEPS)]
    n = DEVICES * STEPS
    started = time.perf_counter()
    for batch in batches:
        for p in batch:
            enricher.derive(p)
    derive_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    written = 0
    for batch in batches:
        ingested = engine.ingest(batch)
        assert not ingested.recompute
        written += sum(len(u.records) for u in ingested.updates)
    ingest_us = (time.perf_counter() - started) / n * 1e6
    print(f"{n} fixes, {len(built.definition.events[1].index.geofences)} geofences, "
          f"{DEVICES} devices, {written} timing records")  # fmt: skip
    print(f"io mapping   {derive_us:6.2f} µs/fix")
    print(f"timing       {ingest_us:6.2f} µs/fix")
    print(f"total        {derive_us + ingest_us:6.2f} µs/fix (target < 20)")


if __name__ == "__main__":
    main()
