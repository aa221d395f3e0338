"""The timing feed through a Redis outage: crossings announced while Redis is down wait
in the publisher's buffer and reach the stream (and a tail) once Redis is back."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest
import trio

from processor.broadcast.timing_feed import TimingPublisher, TimingTail
from processor.core.redis_io import RedisStreams
from processor.logs import make_logger
from tests.broadcast.test_timing_feed import T0, Crossing
from tests.helpers import wait_for
from tests.servers import RedisServer, redis_server

KEY = "test:telemetry:timing"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_crossings_announced_while_redis_is_down_arrive_after(
    own_redis: RedisServer, bridge: None, nursery: trio.Nursery
) -> None:
    lines = io.StringIO()
    log = make_logger("warning", lines)
    publishing = await RedisStreams.connect(own_redis.url)
    tailing = await RedisStreams.connect(own_redis.url)
    delivered: list[dict[str, object]] = []
    tail = TimingTail(tailing, KEY, 200, lambda e, f: delivered.append(orjson.loads(f)), log)
    await nursery.start(tail.run)
    publisher = TimingPublisher(publishing, KEY, log)
    await nursery.start(publisher.run)

    publisher.announce(Crossing())
    await wait_for(lambda: len(delivered) == 1, 10, what="the first crossing")
    own_redis.kill()  # kill -9; the AOF keeps what was written
    for i in range(1, 4):
        publisher.announce(Crossing(geofence_id=5 + i, crossed_at=T0 + timedelta(seconds=i)))
    # Not lost, not sent: they wait while the publisher backs off.
    await wait_for(
        lambda: "timing feed: redis unavailable" in lines.getvalue(), 10, what="a failed send"
    )
    assert publisher.pending == 3
    await trio.to_thread.run_sync(own_redis.start)
    await wait_for(lambda: len(delivered) == 4, 20, what="the crossings after the outage")
    assert publisher.pending == 0
    assert [c["crossed_at"] for c in delivered] == [
        "2026-06-01T09:00:00.000Z",
        "2026-06-01T09:00:01.000Z",
        "2026-06-01T09:00:02.000Z",
        "2026-06-01T09:00:03.000Z",
    ]
    for streams in (publishing, tailing):
        await streams.aclose()
