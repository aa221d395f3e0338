"""Appending to a Redis stream from a bounded buffer, without ever blocking the producer.

Two producers hand a stream things that are already safe elsewhere and only need to
reach other instances: the race domain's crossings (stored in ``timing_records``; the
stream makes them live on every instance's WebSocket) and the pipeline's committed fixes
(stored in ``positions``; the stream feeds a timing instance). Neither may wait for
Redis: one is the timing worker, the other the writer. So ``put`` only appends to a
bounded buffer and wakes ``run``, which sends what is buffered, ``chunk`` items per stream
entry, in order, and waits out a Redis outage with backoff. Beyond ``pending_max`` the
oldest items are dropped, counted and logged: whoever reads the stream must be able to
recover them from the database, and both readers can.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import structlog
import trio
from prometheus_client import Counter

from processor.core.backoff import Backoff
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisStreams, RedisUnavailable

T = TypeVar("T")
Fields = Mapping[bytes, bytes]
# How long shutdown waits for what is still buffered to reach Redis.
FLUSH_ON_EXIT_S = 1.0


@attrs.define
class StreamAppender(Generic[T]):
    streams: RedisStreams
    key: str
    entry: Callable[[Sequence[T]], Fields]  # up to ``chunk`` items -> one stream entry
    log: structlog.typing.FilteringBoundLogger
    what: str  # names the stream in warnings
    maxlen: int  # entries the stream keeps, about (XADD MAXLEN ~)
    pending_max: int
    chunk: int
    dropped: int = attrs.field(default=0, init=False)
    _dropped_metric: Counter | None = attrs.field(default=None, init=False)
    _pending: collections.deque[T] = attrs.field(init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._pending = collections.deque(maxlen=self.pending_max)

    @property
    def pending(self) -> int:
        """Items not yet in the stream."""
        return len(self._pending)

    def instrument(self, metrics: Metrics, feed: str) -> None:
        """Report this buffer as ``feed`` in ``processor_feed_pending`` / ``_dropped_total``."""
        pending = self._pending
        metrics.feed_pending.labels(feed).set_function(lambda: len(pending))
        self._dropped_metric = metrics.feed_dropped.labels(feed)

    def put(self, item: T) -> None:
        """Buffer one item for the stream: synchronous, never blocks."""
        if len(self._pending) == self.pending_max:
            self.dropped += 1
            if self._dropped_metric is not None:
                self._dropped_metric.inc()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self.log.warning(f"{self.what} full: oldest dropped", n=self.dropped)
        self._pending.append(item)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._flush(Backoff(cap_s=2.0))
        finally:
            with trio.move_on_after(FLUSH_ON_EXIT_S) as scope:
                scope.shield = True
                await self._flush(None)

    async def _flush(self, backoff: Backoff | None) -> None:
        """Send what is buffered; retry while Redis is away (``None``: try once)."""
        while self._pending:
            chunk = [self._pending[i] for i in range(min(self.chunk, len(self._pending)))]
            dropped = self.dropped
            try:
                await self.streams.append(self.key, [self.entry(chunk)], self.maxlen)
            except RedisUnavailable as exc:
                if backoff is None:
                    self.log.warning(f"{self.what}: unsent at shutdown", n=len(self._pending))
                    return
                if not backoff.attempt:
                    self.log.warning(f"{self.what}: redis unavailable", error=str(exc))
                await backoff.wait()
                continue
            # Items dropped meanwhile left from the front, where the sent chunk was.
            for _ in range(max(0, len(chunk) - (self.dropped - dropped))):
                self._pending.popleft()
            if backoff is not None:
                backoff.reset()


class AppendingPlugin:
    """For a plug-in whose work is a ``StreamAppender``: its figures and its task."""

    __slots__ = ()
    streams: RedisStreams
    key: str
    log: structlog.typing.FilteringBoundLogger
    name: str
    _appender: StreamAppender[Any]

    def appender(
        self, entry: Callable[[Sequence[T]], Fields], maxlen: int, pending_max: int, chunk: int
    ) -> StreamAppender[T]:
        """The plug-in's appender, on its stream key, named after it in warnings."""
        return StreamAppender(
            self.streams, self.key, entry, self.log, self.name, maxlen, pending_max, chunk
        )

    @property
    def enricher(self) -> None:
        return None

    def instrument(self, metrics: Metrics, feed: str) -> None:
        self._appender.instrument(metrics, feed)

    @property
    def pending(self) -> int:
        """Items not yet in the stream."""
        return self._appender.pending

    @property
    def dropped(self) -> int:
        """Items lost to a full buffer."""
        return self._appender.dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._appender.run(task_status=task_status)
