"""Spacing of stream reads under a steady feed: tens of entries per call, not one.

Ingestion XADDs each fix on its own, and Redis wakes a blocked ``XREADGROUP`` / ``XREAD``
on every one, so at 2,000 fixes/s a reader that reads again at once makes ~2,000 calls a
second with one entry each. Every call crosses the bridge, runs redis-py and both event
loops: measured at ~99 % of a core for the consumer and the broadcast tail together,
before any record was decoded (bench/README.md, "Read pacing").

So after a read that returned entries but fewer than it asked for (the reader is ahead
of the feed), the next read waits ``interval_s``: the entries of that interval gather in
Redis and come back in one call. A full read (a backlog) and an empty one (the block
timed out on an idle stream) go again at once, so a backlog drains at full speed and
the first fix after a quiet spell is not delayed. The cost is at most ``interval_s`` of
latency per entry, only while the feed is slower than the reader.
"""

from __future__ import annotations

import attrs
import trio


@attrs.define
class ReadPacer:
    interval_s: float
    _next_at: float = attrs.field(default=0.0, init=False)

    async def wait(self) -> None:
        """Before a read: returns once the interval after a short read has passed."""
        if self._next_at > trio.current_time():
            await trio.sleep_until(self._next_at)
        else:
            await trio.lowlevel.checkpoint()

    def read(self, got: int, asked: int) -> None:
        """After a read of ``got`` entries out of ``asked``."""
        short = 0 < got < asked
        self._next_at = trio.current_time() + self.interval_s if short else 0.0
