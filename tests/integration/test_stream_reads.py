"""What the adapter's reads return, from a real Redis: the reply shapes it parses itself."""

from __future__ import annotations

import redis

from processor.core.bridge import call
from processor.core.model import RawEntry
from processor.core.redis_io import READER_LIMIT, RedisStreams, _group_reply, _read_reply


async def test_group_reads_keep_every_field_and_show_trimmed_entries_empty(
    bridge: None, redis_url: str, stream_key: str, sync_redis: redis.Redis
) -> None:
    one = sync_redis.xadd(stream_key, {"payload": b"{}"}).decode()
    several = sync_redis.xadd(stream_key, {"v": "1", "payload": b"\xff", "extra": "x"}).decode()
    sync_redis.xgroup_create(stream_key, "g", id="0")
    streams = await RedisStreams.connect(redis_url)
    try:
        read = await streams.read_group(stream_key, "g", "c", ">", 10, 100)
        assert read == [
            RawEntry(one, {b"payload": b"{}"}),
            RawEntry(several, {b"v": b"1", b"payload": b"\xff", b"extra": b"x"}),
        ]
        sync_redis.xdel(stream_key, one)  # still pending, its fields gone
        again = await streams.read_group(stream_key, "g", "c", "0", 10, 100)
        assert again[0] == RawEntry(one, {})
        assert again[1].entry_id == several
        tail = await streams.read_after({stream_key: "0-0"}, 10, 100)
        assert tail == [(stream_key, several, {b"v": b"1", b"payload": b"\xff", b"extra": b"x"})]
        assert await streams.read_after({stream_key: several}, 10, 50) == []
    finally:
        await streams.aclose()


def test_both_protocols_reply_shapes_are_read_alike() -> None:
    entries = [
        [b"1-1", [b"payload", b"a"]],
        [b"1-2", None],
        [b"1-3", [b"v", b"1", b"payload", b"b"]],
    ]
    resp2 = [[b"s", entries]]
    resp3 = {b"s": entries}
    expected = [
        RawEntry("1-1", {b"payload": b"a"}),
        RawEntry("1-2", {}),
        RawEntry("1-3", {b"v": b"1", b"payload": b"b"}),
    ]
    assert _group_reply(resp2) == _group_reply(resp3) == expected
    assert _group_reply(None) == _group_reply({}) == []
    assert (
        _read_reply(resp2) == _read_reply(resp3) == [("s", e.entry_id, e.fields) for e in expected]
    )


async def test_a_connection_reads_a_whole_reply_without_pausing(
    bridge: None, redis_url: str
) -> None:
    """What redis-py does with ``redis_io.READER_LIMIT``: the connection's asyncio
    ``StreamReader`` gets it, so a 1,000-entry reply (~480 KB) does not pause the
    socket. Private attributes of redis-py and asyncio, pinned by the lock: this fails
    if either stops honouring the argument."""
    streams = await RedisStreams.connect(redis_url)
    pool = streams.client.connection_pool

    async def limit_of_a_connection() -> int:
        connection = await pool.get_connection()
        try:
            return int(connection._reader._limit)
        finally:
            await pool.release(connection)

    try:
        assert await call(limit_of_a_connection) == READER_LIMIT
    finally:
        await streams.aclose()
