"""One tracker's timeline: fixes along its route, and when ingestion receives each one.

A fix is recorded every 1-5 s of simulated time. While the car is in coverage a fix
reaches ingestion within a second or two; in a coverage gap (rally stages cross empty
country) fixes pile up in the tracker's memory and go out in one burst when the signal
comes back, in shuffled order, with ``received_at`` the upload time. That is the late,
out-of-order data the race-domain rules insist must time the same as live data.

Times are integer milliseconds from the run's start, so the same seed gives the same
records whatever the wall clock says.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Final

import attrs

from processor.core.model import Position, evolve
from processor.simulator import geo
from processor.simulator.devices import Device, Telemetry
from processor.simulator.motion import Driver
from processor.simulator.routes import Route

# Below this a car has not moved enough for a heading: keep the last one (GPS does too).
_HEADING_MIN_M: Final = 1.0
_SATELLITES: Final = (6, 14)


@attrs.frozen(kw_only=True)
class Timing:
    """Knobs of a tracker's timeline, shared by every device of a run."""

    interval_ms: tuple[int, int] = (1_000, 5_000)
    nofix_ratio: float = 0.005  # share of records without a GPS fix (0, 0, 0 satellites)
    gap_share: float = 0.05  # share of simulated time spent out of coverage
    gap_mean_s: float = 120.0  # mean length of a coverage gap

    @property
    def mean_interval_s(self) -> float:
        return sum(self.interval_ms) / 2 / 1000


@attrs.frozen(kw_only=True)
class Delivery:
    """A fix as ingestion publishes it: ``receipt_ms`` orders the stream across devices."""

    receipt_ms: int
    device: int
    position: Position
    late: bool


def deliveries(
    device: Device, route: Route, rng: random.Random, timing: Timing, start: datetime
) -> Iterator[Delivery]:
    """This device's records in the order ingestion receives them (endless)."""
    driver = Driver(rng)
    telemetry = Telemetry(odometer_m=rng.uniform(5e6, 4e8))
    direction = rng.choice((1.0, -1.0))
    travelled = rng.uniform(0, route.length_m)
    lat, lon, _ = route.locate(travelled)
    heading = 0.0
    ignition, moving = driver.ignition, driver.moving
    clock_ms = rng.randint(0, timing.interval_ms[1])
    last_receipt = 0
    gap_end_ms: int | None = None
    buffered: list[Position] = []
    while True:
        dt_ms = rng.randint(*timing.interval_ms)
        clock_ms += dt_ms
        metres = driver.advance(dt_ms / 1000)
        travelled += direction * metres
        telemetry.odometer_m += metres
        if gap_end_ms is not None and clock_ms >= gap_end_ms:
            # Back in coverage: the buffer goes out first, shuffled, all received now.
            rng.shuffle(buffered)
            for position in buffered:
                last_receipt = max(last_receipt + 1, clock_ms + rng.randint(200, 900))
                received = start + timedelta(milliseconds=last_receipt)
                yield Delivery(
                    receipt_ms=last_receipt,
                    device=device.index,
                    position=evolve(position, received_at=received),
                    late=True,
                )
            buffered, gap_end_ms = [], None
        elif gap_end_ms is None and rng.random() < _gap_chance(timing, dt_ms):
            gap_end_ms = clock_ms + int(timing.gap_mean_s * rng.uniform(500, 1500))

        new_lat, new_lon, altitude = route.locate(travelled)
        if geo.distance_m(lat, lon, new_lat, new_lon) >= _HEADING_MIN_M:
            heading = geo.bearing_deg(lat, lon, new_lat, new_lon)
        lat, lon = new_lat, new_lon
        fix = rng.random() >= timing.nofix_ratio
        event = 0
        if driver.ignition != ignition:
            event = 239
        elif driver.moving != moving:
            event = 240
        ignition, moving = driver.ignition, driver.moving
        attributes = telemetry.io_bag(
            device, rng, ignition=ignition, moving=moving, fix=fix, covered=gap_end_ms is None
        )
        position = Position(
            device_id=device.imei,
            ts=start + timedelta(milliseconds=clock_ms),
            latitude=round(lat, 7) if fix else 0.0,
            longitude=round(lon, 7) if fix else 0.0,
            altitude=float(round(altitude)) if fix else 0.0,
            heading=float(round(heading) % 360) if fix else 0.0,
            speed=float(round(driver.speed_kmh)) if fix else 0.0,
            satellites=rng.randint(*_SATELLITES) if fix else 0,
            priority=1 if event else 0,
            event_io_id=event,
            fix_valid=fix,
            attributes=attributes,
            codec=device.codec,
        )
        if gap_end_ms is not None:
            buffered.append(position)
            continue
        last_receipt = max(last_receipt + 1, clock_ms + rng.randint(150, 1_500))
        received = start + timedelta(milliseconds=last_receipt)
        yield Delivery(
            receipt_ms=last_receipt,
            device=device.index,
            position=evolve(position, received_at=received),
            late=False,
        )


def _gap_chance(timing: Timing, dt_ms: int) -> float:
    """Chance a gap starts in this step, so gaps take ``gap_share`` of the time on average.

    Gaps start as a Poisson process of rate ``share / ((1 - share) * mean)`` while covered:
    covered time and gap time then average out in the ratio ``(1 - share) : share``.
    """
    if timing.gap_share <= 0:
        return 0.0
    return dt_ms / 1000 * timing.gap_share / ((1 - timing.gap_share) * timing.gap_mean_s)
