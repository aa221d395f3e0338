"""Size-or-linger batching over a channel of record lists.

A batch is written when it holds ``batch_max`` records, or ``linger_s`` after its first
record arrived, or when the input closes. Records already waiting in the channel are
taken without waiting, so the linger only costs latency when input is slower than the
writer; under load batches fill up and the linger never fires.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs
import trio

from processor.core.commit_order import CommitOrder

T = TypeVar("T")


@attrs.define
class Batcher(Generic[T]):
    receive: trio.MemoryReceiveChannel[list[T]]
    batch_max: int
    linger_s: float
    _buffer: list[T] = attrs.field(factory=list)
    _closed: bool = False

    async def next_batch(self) -> list[T] | None:
        """The next batch, or None once the input is closed and everything was handed out."""
        if not self._buffer and not self._closed:
            try:
                self._buffer.extend(await self.receive.receive())
            except trio.EndOfChannel:
                self._closed = True
        deadline = trio.current_time() + self.linger_s
        while len(self._buffer) < self.batch_max and not self._closed:
            try:
                self._buffer.extend(self.receive.receive_nowait())
                continue
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                self._closed = True
                break
            with trio.move_on_at(deadline):
                try:
                    self._buffer.extend(await self.receive.receive())
                except trio.EndOfChannel:
                    self._closed = True
                continue
            break
        batch, self._buffer = self._buffer[: self.batch_max], self._buffer[self.batch_max :]
        return batch or None


@attrs.define
class SharedBatches(Generic[T]):
    """One batcher for several writers (``WRITERS``): batches are formed one at a time,
    so each is as full as a lone writer's would be (two batchers on one channel each
    took every other read and lingered for the rest: smaller batches, more commits),
    and each is numbered (``CommitOrder``) in the order it was formed."""

    batcher: Batcher[T]
    order: CommitOrder = attrs.field(factory=CommitOrder)  # the writers share it too
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def next(self) -> tuple[list[T], int] | None:
        """The next batch and its ticket, or None once the input is closed and drained."""
        async with self._lock:
            batch = await self.batcher.next_batch()
            return None if batch is None else (batch, self.order.take())
