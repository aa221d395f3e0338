"""The claimer, in a running app: a dead consumer's entries are finished by the survivor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import attrs
import pytest
import redis
import trio

from processor import config
from processor.app import App
from processor.core.codec import encode
from processor.core.model import Position
from processor.core.redis_io import RedisStreams
from tests.helpers import count_rows, group_pending, make_position, start_app, wait_for


@pytest.fixture
def claim_settings(settings: config.Settings) -> config.Settings:
    return attrs.evolve(
        settings, claim_threshold_ms=300, claim_interval_ms=100, dlq_max_deliveries=3
    )


@pytest.fixture
async def app(claim_settings: config.Settings, nursery: trio.Nursery) -> AsyncIterator[App]:
    running = await start_app(nursery, claim_settings)
    yield running.app
    await running.stop()


def _publish_stranded(
    client: redis.Redis, stream: str, consumer: str, positions: list[Position]
) -> list[str]:
    """Publish entries and deliver them to a consumer that then 'dies' without acking.

    XADD and XREADGROUP run in one MULTI so the live instance cannot read them first.
    """
    pipe = client.pipeline(transaction=True)
    for p in positions:
        pipe.xadd(stream, encode(p))  # type: ignore[arg-type]
    pipe.xreadgroup("processor", consumer, {stream: ">"}, count=len(positions) * 10)
    *ids, _ = pipe.execute()
    return [i.decode() for i in ids]


async def test_dead_consumers_entries_are_claimed_written_and_consumer_removed(
    app: App, claim_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    stream = claim_settings.telemetry_stream
    prefix = f"C{uuid.uuid4().hex[:8]}"
    positions = [make_position(f"{prefix}-{i % 4}", second=i) for i in range(40)]
    _publish_stranded(sync_redis, stream, "dead-instance", positions)

    await wait_for(lambda: count_rows(claim_settings.postgres_url, prefix) == 40, what="rows")
    await wait_for(lambda: group_pending(sync_redis, stream) == 0, what="all acked")
    await wait_for(
        lambda: (
            "dead-instance"
            not in {c["name"].decode() for c in sync_redis.xinfo_consumers(stream, "processor")}
        ),
        what="dead consumer removed",
    )
    # A claim is a re-delivery: both counters see every stranded entry.
    assert app.metrics.claimed._value.get() >= 40
    assert app.metrics.delivery_retries._value.get() >= 40


async def test_entry_delivered_too_often_is_dead_lettered(
    app: App, claim_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    stream = claim_settings.telemetry_stream
    # Simulate earlier failed attempts: the entry was delivered 3 times and never acked.
    [entry_id] = _publish_stranded(
        sync_redis, stream, "crashy", [make_position(f"D{uuid.uuid4().hex[:8]}")]
    )
    for _ in range(2):
        sync_redis.xclaim(stream, "processor", "crashy", 0, [entry_id])
    await wait_for(lambda: sync_redis.xlen(claim_settings.dlq_stream_key) == 1, what="DLQ")
    [(_, fields)] = sync_redis.xrange(claim_settings.dlq_stream_key)
    assert fields[b"error_kind"] == b"max_deliveries"
    assert fields[b"source_id"] == entry_id.encode()
    assert int(fields[b"delivery_count"]) >= 3
    await wait_for(lambda: group_pending(sync_redis, stream) == 0, what="acked")


async def test_entry_trimmed_while_pending_is_dead_lettered_as_trimmed(
    app: App, claim_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    stream = claim_settings.telemetry_stream
    [gone, kept] = _publish_stranded(
        sync_redis,
        stream,
        "trimmed-owner",
        [make_position(f"T{uuid.uuid4().hex[:8]}", second=s) for s in range(2)],
    )
    sync_redis.xdel(stream, gone)
    dlq = claim_settings.dlq_stream_key
    # A sweep runs every 100 ms and takes both entries in one XAUTOCLAIM.
    await wait_for(lambda: sync_redis.xlen(dlq) >= 1, 5, what="a dead letter")
    await wait_for(lambda: group_pending(sync_redis, stream) == 0, what="all claimed")
    letters = sync_redis.xrange(dlq)
    assert [(f[b"source_id"], f[b"error_kind"]) for _, f in letters] == [
        (gone.encode(), b"trimmed")
    ]
    assert kept not in {f[b"source_id"].decode() for _, f in letters}


async def test_a_consumer_is_deleted_only_while_it_owns_nothing(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    """DELCONSUMER drops a consumer's pending entries with it: the "owns nothing" check
    must be part of the delete, or entries read in between are lost from the group."""
    stream = settings.telemetry_stream
    sync_redis.xgroup_create(stream, "processor", id="0", mkstream=True)
    [held] = _publish_stranded(sync_redis, stream, "busy", [make_position("E1")])
    sync_redis.xgroup_createconsumer(stream, "processor", "idle")
    streams = await RedisStreams.connect(settings.redis_url)
    try:
        kept = await streams.delete_consumer_if_idle(stream, "processor", "busy")
        gone = await streams.delete_consumer_if_idle(stream, "processor", "idle")
    finally:
        await streams.aclose()
    assert (kept, gone) == (False, True)
    assert {c["name"].decode() for c in sync_redis.xinfo_consumers(stream, "processor")} == {"busy"}
    [row] = sync_redis.xpending_range(stream, "processor", "-", "+", 10)
    assert (row["message_id"].decode(), row["consumer"]) == (held, b"busy")
