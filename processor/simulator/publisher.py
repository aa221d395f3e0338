"""Sending simulated records to the stream at a steady rate, and counting what went out.

Pacing is a token bucket on ``time.monotonic``: records go out in pipelined batches of
about 1/20 s worth, so the rate holds from a handful to tens of thousands of records a
second without one round trip per record. The bucket holds one batch at most, so a
stall (Redis busy, the machine paused) is not followed by a catch-up burst.

A record is also never sent before ingestion would have received it (``received`` is
in the future only when the simulated clock runs ahead of the wall clock): that keeps
fix times from drifting past the processor's FUTURE_TOLERANCE_S in a long run.

With several shards (``REDIS_TELEMETRY_STREAM`` lists them) each record goes where
ingestion would put it: ``shard_for(device_id, shards)``; a record without a readable
device id (some poison) goes to the first shard.

This is a synchronous CLI tool, not part of the Trio daemon: blocking redis-py and
``time.sleep`` are the simple, right tools here.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import attrs
import orjson
import redis

from processor.core.sharding import shard_for
from processor.simulator.generator import SimRecord

_BATCH_MAX: Final = 500
_BATCHES_PER_S: Final = 20


class Sink(Protocol):
    def send(self, batch: list[dict[bytes, bytes]]) -> None: ...


@attrs.define
class RedisSink:
    """XADD each batch in one non-transactional pipeline (``MAXLEN ~`` when asked)."""

    client: redis.Redis | redis.RedisCluster
    stream: str
    maxlen: int | None = None
    # Several shard keys: each record goes to its device's shard instead of ``stream``.
    shards: tuple[str, ...] = ()

    def send(self, batch: list[dict[bytes, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(self._key(fields), fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.execute()

    def _key(self, fields: dict[bytes, bytes]) -> str:
        if len(self.shards) < 2:
            return self.stream
        try:
            device_id = orjson.loads(fields.get(b"payload", b"")).get("device_id")
        except (orjson.JSONDecodeError, AttributeError):
            device_id = None
        return shard_for(device_id, self.shards) if type(device_id) is str else self.shards[0]


@attrs.define
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; ``take`` waits for them."""

    rate: float
    capacity: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = attrs.field(init=False)
    _at: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._tokens, self._at = self.capacity, self.clock()

    def take(self, n: int) -> None:
        self._refill()
        if self._tokens < n:
            self.sleep((n - self._tokens) / self.rate)
            self._refill()
        self._tokens -= n

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now


@attrs.define
class Summary:
    """What a run published; ``as_dict`` is the ``--json`` output."""

    stream: str
    devices: int
    seed: int
    published: int = 0
    valid: int = 0
    poison: int = 0
    late: int = 0
    no_fix: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    variants: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def count(self, batch: list[SimRecord]) -> None:
        for record in batch:
            if record.kind == "poison":
                self.poison += 1
                self.variants[record.variant or "?"] += 1
            else:
                self.valid += 1
                self.late += record.late
                self.no_fix += not record.fix
        self.published += len(batch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "published": self.published,
            "valid": self.valid,
            "poison": self.poison,
            "poison_variants": dict(sorted(self.variants.items())),
            "late": self.late,
            "no_fix": self.no_fix,
            "devices": self.devices,
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.published / self.elapsed_s, 1) if self.elapsed_s else None,
            "interrupted": self.interrupted,
        }

    def text(self) -> str:
        d = self.as_dict()
        variants = ", ".join(f"{k} {v}" for k, v in d["poison_variants"].items())
        return (
            f"published {d['published']} records to {d['stream']} in {d['elapsed_s']} s"
            f" ({d['rate_per_s']}/s){' (interrupted)' if self.interrupted else ''}\n"
            f"  valid {d['valid']} (late {d['late']}, no fix {d['no_fix']}),"
            f" poison {d['poison']}{f' ({variants})' if variants else ''}\n"
            f"  devices {d['devices']}, seed {d['seed']}"
        )


def publish(
    records: Iterable[SimRecord],
    sink: Sink,
    summary: Summary,
    *,
    rate: float,
    duration_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Send ``records`` at ``rate`` a second (0: as fast as possible) until they run out
    or ``duration_s`` passes; ``summary`` is updated batch by batch, so it is right even
    if a KeyboardInterrupt ends the run."""
    size = _BATCH_MAX if rate <= 0 else max(1, min(_BATCH_MAX, int(rate / _BATCHES_PER_S)))
    bucket = TokenBucket(rate, size, clock, sleep) if rate > 0 else None
    began = clock()
    source = iter(records)
    try:
        while duration_s is None or clock() - began < duration_s:
            batch = list(itertools.islice(source, size))
            if not batch:
                return
            if bucket is not None:
                bucket.take(len(batch))
            ahead = (batch[-1].received - wall()).total_seconds()
            if ahead > 0:
                sleep(ahead)
            sink.send([record.fields for record in batch])
            summary.count(batch)
    finally:
        summary.elapsed_s = clock() - began
