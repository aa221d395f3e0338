"""The simulator's records as a pure, seeded iterator: no clock, no network, no files.

Everything random comes from ``plan.seed`` and every time from ``start``, so a test can
check the records themselves (they decode, speeds are plausible, late data is late) and
that one seed always gives the same sequence. The publisher only paces and sends them.

Poison records are drawn from a random stream of their own and slipped in between
valid ones, so the valid records of a seed do not depend on ``poison_ratio``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Literal

import attrs

from processor.core.codec import encode
from processor.simulator import poison
from processor.simulator.devices import make_device
from processor.simulator.routes import Route
from processor.simulator.tracker import Delivery, Timing, deliveries

Kind = Literal["valid", "poison"]


@attrs.frozen(kw_only=True)
class Plan:
    """What to simulate. ``routes`` are assigned round robin to devices."""

    routes: Sequence[Route]
    devices: int = 10
    seed: int = 0
    poison_ratio: float = 0.0
    timing: Timing = attrs.field(factory=Timing)

    def __attrs_post_init__(self) -> None:
        if self.devices < 1 or not self.routes:
            raise ValueError("a plan needs at least one device and one route")
        if not 0.0 <= self.poison_ratio < 1.0:
            raise ValueError("poison_ratio must be in [0, 1)")
        if not 0.0 <= self.timing.gap_share < 1.0:
            raise ValueError("gap_share must be in [0, 1)")

    @property
    def records_per_second(self) -> float:
        """How many records the devices produce per second of simulated time."""
        valid = self.devices / self.timing.mean_interval_s
        return valid / (1.0 - self.poison_ratio)


@attrs.frozen(kw_only=True)
class SimRecord:
    """One stream entry to XADD, with what the simulator knows about it."""

    fields: dict[bytes, bytes]
    kind: Kind
    device_id: str
    received: datetime  # when ingestion got it: the record is not published earlier
    late: bool = False  # uploaded after a coverage gap
    fix: bool = True  # False: a no-fix record (0, 0, 0 satellites)
    variant: str | None = None  # which poison, for poison records


def generate(plan: Plan, start: datetime) -> Iterator[SimRecord]:
    """All devices' records in stream order (endless; slice it). ``start`` is time zero."""
    serial_base = random.Random(f"{plan.seed}:fleet").randrange(1_000_000)
    streams = []
    for index in range(plan.devices):
        rng = random.Random(f"{plan.seed}:device:{index}")
        device = make_device(index, rng, serial_base)
        route = plan.routes[index % len(plan.routes)]
        streams.append(deliveries(device, route, rng, plan.timing, start))
    spoiler = random.Random(f"{plan.seed}:poison")
    for delivery in heapq.merge(*streams, key=_order):
        fields = encode(delivery.position)
        received = start + timedelta(milliseconds=delivery.receipt_ms)
        device_id = delivery.position.device_id
        while plan.poison_ratio and spoiler.random() < plan.poison_ratio:
            variant, bad = poison.spoil(spoiler, fields)
            yield SimRecord(
                fields=bad, kind="poison", device_id=device_id, received=received, variant=variant
            )
        yield SimRecord(
            fields=fields,
            kind="valid",
            device_id=device_id,
            received=received,
            late=delivery.late,
            fix=delivery.position.fix_valid,
        )


def _order(delivery: Delivery) -> tuple[int, int]:
    return (delivery.receipt_ms, delivery.device)
