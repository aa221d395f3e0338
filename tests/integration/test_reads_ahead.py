"""Reads queued on the reader's connection while a backlog drains (``read_ahead``),
against a real Redis.

What must hold: every entry is returned exactly once and in id order, even when the
caller changes what it asks for; queued reads are really in Redis before the caller
asks (they show as pending); none are sent for a reader that has caught up; a reader
that stops gets back what its queued reads took, even one it was cut off reading.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import trio

from processor.core.redis_io import RedisStreams
from tests.helpers import wait_for

COUNT = 10


@pytest.fixture
async def streams(bridge: None, redis_url: str) -> AsyncIterator[RedisStreams]:
    client = await RedisStreams.connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _publish(sync_redis: redis.Redis, stream_key: str, n: int) -> list[str]:
    pipe = sync_redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream_key, {"payload": str(i).encode()})
    return [entry_id.decode() for entry_id in pipe.execute()]


def _pending(sync_redis: redis.Redis, stream_key: str) -> int:
    return int(sync_redis.xpending(stream_key, "g")["pending"])


async def test_a_backlog_comes_back_whole_once_and_in_order(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    ids = _publish(sync_redis, stream_key, 7 * COUNT + 3)
    sync_redis.xgroup_create(stream_key, "g", id="0")
    got: list[str] = []
    sizes = []
    while True:
        read = await streams.read_group(stream_key, "g", "c", ">", COUNT, 50, 2)
        sizes.append(len(read))
        got += [e.entry_id for e in read]
        if len(read) < COUNT:
            break
    assert got == ids
    assert sizes == [COUNT] * 7 + [3]
    # Caught up: a read still queued is the next one and gets what comes next (the
    # first XADD may wake it alone, or its block may have run out before).
    later = _publish(sync_redis, stream_key, 2)
    again: list[str] = []
    while len(again) < len(later):
        read = await streams.read_group(stream_key, "g", "c", ">", COUNT, 2000, 2)
        again += [e.entry_id for e in read]
    assert again == later
    assert _pending(sync_redis, stream_key) == len(ids) + 2


async def test_reads_ahead_are_in_redis_before_they_are_asked_for(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    _publish(sync_redis, stream_key, 10 * COUNT)
    sync_redis.xgroup_create(stream_key, "g", id="0")
    first = await streams.read_group(stream_key, "g", "c", ">", COUNT, 50, 2)
    assert len(first) == COUNT
    # Two more reads were sent as the first came back: Redis delivered them.
    await wait_for(lambda: _pending(sync_redis, stream_key) == 3 * COUNT, 5, 0.01, "2 ahead")
    # Taking one makes room: the next is sent, and two wait again.
    second = await streams.read_group(stream_key, "g", "c", ">", COUNT, 50, 2)
    assert len(second) == COUNT
    await wait_for(lambda: _pending(sync_redis, stream_key) == 4 * COUNT, 5, 0.01, "topped up")
    await streams.aclose()
    # Closing dropped them without an error; what they took stays pending for this
    # consumer, for its next start to read first (or another instance to claim).
    assert _pending(sync_redis, stream_key) == 4 * COUNT


async def test_without_read_ahead_or_when_caught_up_nothing_is_sent_early(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    """Another consumer reading right after gets the very next entries: a read sent
    ahead would have been in Redis first (it is sent before the reply is returned)."""
    ids = _publish(sync_redis, stream_key, 3 * COUNT)
    sync_redis.xgroup_create(stream_key, "g", id="0")
    first = await streams.read_group(stream_key, "g", "c", ">", COUNT, 50, 0)
    after = await streams.read_group(stream_key, "g", "other", ">", COUNT, 50, 0)
    assert [e.entry_id for e in first + after] == ids[: 2 * COUNT]
    # A short read (caught up) sends nothing ahead, whatever the depth.
    short = await streams.read_group(stream_key, "g", "c", ">", 5 * COUNT, 50, 2)
    assert [e.entry_id for e in short] == ids[2 * COUNT :]
    later = _publish(sync_redis, stream_key, COUNT)
    other = await streams.read_group(stream_key, "g", "other", ">", 5 * COUNT, 50, 0)
    assert [e.entry_id for e in other] == later


async def test_a_cancelled_reader_drops_its_reads_and_reads_again_cleanly(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    sync_redis.xgroup_create(stream_key, "g", id="0", mkstream=True)
    with trio.move_on_after(0.2) as scope:
        await streams.read_group(stream_key, "g", "c", ">", COUNT, 10_000, 2)
    assert scope.cancelled_caught
    ids = _publish(sync_redis, stream_key, 3)
    read = await streams.read_group(stream_key, "g", "c", ">", COUNT, 2000, 2)
    assert [e.entry_id for e in read] == ids


async def test_a_stopping_consumer_collects_what_its_reads_ahead_took(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    ids = _publish(sync_redis, stream_key, 10 * COUNT)
    sync_redis.xgroup_create(stream_key, "g", id="0")
    first = await streams.read_group(stream_key, "g", "c", ">", COUNT, 50, 2)
    await wait_for(lambda: _pending(sync_redis, stream_key) == 3 * COUNT, 5, 0.01, "2 ahead")
    collected = await streams.collect_reads_ahead(stream_key, "g", "c")
    assert [[e.entry_id for e in read] for read in collected] == [
        ids[COUNT : 2 * COUNT],
        ids[2 * COUNT : 3 * COUNT],
    ]
    assert [e.entry_id for e in first] == ids[:COUNT]
    # Nothing more was sent: another consumer gets the very next entries.
    other = await streams.read_group(stream_key, "g", "other", ">", COUNT, 50, 0)
    assert [e.entry_id for e in other] == ids[3 * COUNT : 4 * COUNT]
    assert await streams.collect_reads_ahead(stream_key, "g", "c") == []


async def _cut_off_on_a_blocked_queued_read(
    streams: RedisStreams, sync_redis: redis.Redis, stream_key: str
) -> None:
    """Read the whole stream with one read queued ahead, then give up (a deadline,
    shutdown) while reading that queued read, which blocks: nothing is left."""
    ids = _publish(sync_redis, stream_key, COUNT)
    sync_redis.xgroup_create(stream_key, "g", id="0")
    first = await streams.read_group(stream_key, "g", "c", ">", COUNT, 10_000, 1)
    assert [e.entry_id for e in first] == ids
    with trio.move_on_after(0.2) as scope:
        await streams.read_group(stream_key, "g", "c", ">", COUNT, 10_000, 1)
    assert scope.cancelled_caught


async def test_a_caller_cancelled_on_a_queued_read_loses_nothing(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    """The queued read goes on after its caller gave up: the next read gets what it
    took."""
    await _cut_off_on_a_blocked_queued_read(streams, sync_redis, stream_key)
    later = _publish(sync_redis, stream_key, 3)
    again: list[str] = []
    while len(again) < len(later):  # the first XADD may wake the blocked read alone
        read = await streams.read_group(stream_key, "g", "c", ">", COUNT, 10_000, 1)
        again += [e.entry_id for e in read]
    assert again == later
    assert _pending(sync_redis, stream_key) == COUNT + 3


async def test_a_queued_read_cut_off_by_shutdown_is_still_collected(
    streams: RedisStreams, stream_key: str, sync_redis: redis.Redis
) -> None:
    """Shutdown can cancel the consumer while it reads a queued reply: that read goes on
    in the background, and ``collect`` returns what it took."""
    await _cut_off_on_a_blocked_queued_read(streams, sync_redis, stream_key)
    later = _publish(sync_redis, stream_key, 1)
    collected = await streams.collect_reads_ahead(stream_key, "g", "c", wait_s=5)
    assert [[e.entry_id for e in read] for read in collected] == [later]
