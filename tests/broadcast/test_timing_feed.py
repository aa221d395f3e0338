"""The timing feed: crossings through a Redis stream to every broadcast, once each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import orjson
import redis
import trio

from processor import config
from processor.broadcast.timing_feed import (
    PENDING_MAX,
    TimingPublisher,
    TimingTail,
    timing_stream,
)
from processor.core.redis_io import RedisStreams
from processor.logs import make_logger
from tests.helpers import wait_for

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


@attrs.frozen
class Crossing:
    event_id: int = 7
    stage_id: int = 3
    entry_id: int = 11
    geofence_id: int = 5
    device_id: str = "356307042441013"
    kind: str = "start"
    crossed_at: datetime = T0


async def test_each_crossing_reaches_the_tail_once_and_corrections_again(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None, nursery: trio.Nursery
) -> None:
    key = timing_stream(settings.telemetry_stream)
    streams = await RedisStreams.connect(settings.redis_url)
    log = make_logger("warning")
    delivered: list[tuple[str, dict[str, object]]] = []
    tail = TimingTail(
        streams, key, 100, lambda event, frame: delivered.append((event, orjson.loads(frame))), log
    )
    await nursery.start(tail.run)
    publisher = TimingPublisher(streams, key, log)
    await nursery.start(publisher.run)

    corrected = T0 + timedelta(milliseconds=250)
    publisher.announce(Crossing())
    publisher.announce(Crossing())  # told again by a second instance: not passed on
    await wait_for(lambda: publisher.pending == 0, 5, what="first announcements sent")
    for malformed in ({"event_id": "7"}, {"crossings": "[1"}, {"crossings": '[["7", 5]]'}):
        sync_redis.xadd(key, malformed)  # skipped, the tail goes on
    finish = Crossing(kind="finish", geofence_id=6, crossed_at=T0 + timedelta(seconds=60))
    publisher.announce(finish)
    publisher.announce(Crossing(crossed_at=corrected))  # a late fix moved the crossing
    await wait_for(lambda: len(delivered) >= 3, 10, what="crossings delivered")
    # The repeat and the malformed entries came before the last delivered crossing, so
    # they were read and skipped.
    assert [(event, frame["kind"], frame["crossed_at"]) for event, frame in delivered] == [
        ("7", "start", "2026-06-01T09:00:00.000Z"),
        ("7", "finish", "2026-06-01T09:01:00.000Z"),
        ("7", "start", "2026-06-01T09:00:00.250Z"),
    ]
    assert delivered[0][1] == {
        "type": "timing",
        "event_id": "7",
        "stage_id": 3,
        "entry_id": 11,
        "device_id": "356307042441013",
        "kind": "start",
        "crossed_at": "2026-06-01T09:00:00.000Z",
    }
    await streams.aclose()


async def test_a_tail_starts_at_the_newest_crossing(
    settings: config.Settings, bridge: None, nursery: trio.Nursery
) -> None:
    """A broadcast starting later does not replay crossings its clients never asked for."""
    key = timing_stream(settings.telemetry_stream)
    streams = await RedisStreams.connect(settings.redis_url)
    log = make_logger("warning")
    publisher = TimingPublisher(streams, key, log)
    await nursery.start(publisher.run)
    publisher.announce(Crossing())
    await wait_for(lambda: not publisher.pending, 5, what="announcement sent")
    delivered: list[str] = []
    await nursery.start(TimingTail(streams, key, 100, lambda e, f: delivered.append(f), log).run)
    publisher.announce(Crossing(kind="finish", geofence_id=6))
    await wait_for(lambda: bool(delivered), 10, what="the new crossing")
    assert [orjson.loads(f)["kind"] for f in delivered] == ["finish"]
    await streams.aclose()


def test_the_buffer_is_bounded_and_drops_the_oldest() -> None:
    """While Redis is away announcements wait in memory, but never more than PENDING_MAX."""
    publisher = TimingPublisher(None, "k", make_logger("error"))  # type: ignore[arg-type]
    for i in range(PENDING_MAX + 5):
        publisher.announce(Crossing(entry_id=i))
    assert publisher.pending == PENDING_MAX
    assert publisher.dropped == 5
    assert publisher._appender._pending[0][1] == "5:5"  # entries 0-4 were dropped
