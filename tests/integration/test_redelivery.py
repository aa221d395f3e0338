"""A consumer restarted under the same name does not loop forever on an entry that kills it.

With a fixed ``REDIS_CONSUMER_NAME`` an instance gets its own pending entries back after
every crash, before any other instance could claim them (where the delivery count was
always checked). Its re-reads must count deliveries too.
"""

from __future__ import annotations

import uuid

import attrs
import redis
import trio

from processor import config
from processor.core.codec import encode
from tests.helpers import count_rows, group_pending, make_position, start_app, wait_for


async def test_own_pending_entry_at_max_deliveries_is_dead_lettered_not_reread(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    s = attrs.evolve(settings, consumer_name="fixed-name", dlq_max_deliveries=3)
    stream = s.telemetry_stream
    prefix = f"R{uuid.uuid4().hex[:8]}"
    sync_redis.xgroup_create(stream, s.consumer_group, id="0", mkstream=True)
    doomed = sync_redis.xadd(stream, encode(make_position(f"{prefix}-a"))).decode()  # type: ignore[arg-type]
    fine = sync_redis.xadd(stream, encode(make_position(f"{prefix}-b", second=1))).decode()  # type: ignore[arg-type]
    sync_redis.xreadgroup(s.consumer_group, "fixed-name", {stream: ">"}, count=10)
    # Two earlier lives re-read `doomed` and died on it (XCLAIM to the same consumer
    # counts a delivery, like their re-reads did): it is at 3 deliveries, `fine` at 1.
    for _ in range(2):
        sync_redis.xclaim(stream, s.consumer_group, "fixed-name", 0, [doomed])
    counts = {
        r["message_id"].decode(): r["times_delivered"]
        for r in sync_redis.xpending_range(stream, s.consumer_group, "-", "+", 10)
    }
    assert counts[doomed] >= 3 > counts[fine]

    running = await start_app(nursery, s)
    try:
        await wait_for(lambda: sync_redis.xlen(s.dlq_stream_key) == 1, what="a dead letter")
        await wait_for(lambda: group_pending(sync_redis, stream) == 0, what="nothing pending")
        await wait_for(lambda: count_rows(s.postgres_url, prefix) == 1, what="the other row")
    finally:
        await running.stop()
    [(_, letter)] = sync_redis.xrange(s.dlq_stream_key)
    assert letter[b"source_id"] == doomed.encode()
    assert letter[b"error_kind"] == b"max_deliveries"
    assert letter[b"consumer"] == b"fixed-name"
