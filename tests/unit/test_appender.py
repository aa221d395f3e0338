"""The stream appender's buffer: order, chunking, bounds, and what a full buffer drops.

Redis itself is exercised by the timing feed's and the committed feed's integration
tests; here a recording stand-in for ``RedisStreams.append`` holds a send open, so the
test can fill the buffer while a chunk is in flight (a Redis outage, at the moment it
starts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import trio

from processor.core.appender import StreamAppender
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisUnavailable
from processor.logs import make_logger
from tests.helpers import wait_for


@attrs.define
class HeldAppend:
    """Records each XADD batch; while ``hold`` is set, a send waits for it to clear."""

    sent: list[list[int]] = attrs.field(factory=list)
    hold: bool = False
    fail_next: bool = False
    released: trio.Event = attrs.field(factory=trio.Event)
    entered: trio.Event = attrs.field(factory=trio.Event)

    async def append(self, key: str, entries: Sequence[Mapping[bytes, bytes]], maxlen: int) -> None:
        self.entered.set()
        if self.hold:
            await self.released.wait()
        if self.fail_next:
            self.fail_next = False
            raise RedisUnavailable("connection refused")
        for fields in entries:
            self.sent.append([int(v) for v in fields[b"items"].split(b",")])


def appender(streams: HeldAppend, pending_max: int = 5, chunk: int = 2) -> StreamAppender[int]:
    return StreamAppender(
        streams,  # type: ignore[arg-type]
        "k",
        lambda items: {b"items": b",".join(str(i).encode() for i in items)},
        make_logger("error"),
        "test feed",
        maxlen=100,
        pending_max=pending_max,
        chunk=chunk,
    )


async def test_items_go_in_order_in_chunks(nursery: trio.Nursery) -> None:
    streams = HeldAppend()
    feed = appender(streams, pending_max=10, chunk=3)
    await nursery.start(feed.run)
    for i in range(7):
        feed.put(i)
    await wait_for(lambda: feed.pending == 0, 5, what="buffer sent")
    assert streams.sent == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    feed = appender(HeldAppend(), pending_max=5)
    metrics = Metrics.create("s")
    feed.instrument(metrics, "test")
    for i in range(8):
        feed.put(i)
    assert (feed.pending, feed.dropped) == (5, 3)
    assert list(feed._pending) == [3, 4, 5, 6, 7]
    sample = metrics.registry.get_sample_value
    assert sample("processor_feed_pending", {"feed": "test"}) == 5
    assert sample("processor_feed_dropped_total", {"feed": "test"}) == 3


async def test_drops_while_a_chunk_is_in_flight_never_lose_an_unsent_item(
    nursery: trio.Nursery,
) -> None:
    """The oldest items leave the full buffer from the front, where the chunk being sent
    is: when the send succeeds only what is left of that chunk is taken off, not the
    items behind it that were never sent."""
    streams = HeldAppend(hold=True)
    feed = appender(streams, pending_max=5, chunk=2)
    await nursery.start(feed.run)
    for i in range(5):
        feed.put(i)  # [0 1 2 3 4], chunk [0 1] in flight
    with trio.fail_after(5):
        await streams.entered.wait()
    feed.put(5)  # drops 0 (sent, in flight)
    feed.put(6)  # drops 1 (sent, in flight)
    feed.put(7)  # drops 2 (never sent: lost, counted)
    streams.hold = False
    streams.released.set()
    await wait_for(lambda: feed.pending == 0, 5, what="buffer sent")
    assert streams.sent == [[0, 1], [3, 4], [5, 6], [7]]
    assert feed.dropped == 3


async def test_an_outage_is_waited_out_and_the_chunk_sent_again(nursery: trio.Nursery) -> None:
    streams = HeldAppend(fail_next=True)
    feed = appender(streams)
    await nursery.start(feed.run)
    feed.put(1)
    await wait_for(lambda: feed.pending == 0, 5, what="buffer sent")
    assert streams.sent == [[1]]
