"""XREADGROUPs kept in flight while a backlog drains: Redis serves the next reads while
this one is decoded.

Draining a backlog, the consumer read 1,000 entries, decoded them (~3 ms), handed them
on and only then asked for the next 1,000, so the process was idle ~13 % of a drain's
wall time, with the consumer waiting on Redis and a writer waiting for a batch
(bench/README.md, "Reads ahead"). Redis serves such a read in ~1.25 ms, but the ~480 KB
reply comes back in several asyncio loop turns, each behind whatever burst of work the
thread is in. A read task on the Trio side did not help: it needs several scheduler
turns before its command is on the wire, and the decoder's burst usually came first.
One read issued ahead from here helped a little; two, as much as the idle time.

So after a full read of new entries (``>``), the case where the consumer reads again at
once anyway (``read_pacing``), the next read is sent from here, on the asyncio side, and
each that comes back full sends the next, until ``depth`` (``READ_AHEAD``) replies are
waiting to be collected. One read at a time is in Redis: two sent at once on two
connections were seen served the other way round, which would hand the consumer
entries out of id order. A short read means the consumer has caught up: nothing more
is sent, and its pacing decides when it reads next.

Entries a read sent ahead took are delivered to this consumer like any read's, so at
shutdown the consumer collects them (``collect``) and hands them on before the writers
drain: stopping takes no new reads, but finishes the ones already taken. Should that
fail (Redis gone, the budget spent), they stay pending for this consumer name: the next
start reads them first, as after a crash, and another instance's claimer takes them
after ``CLAIM_THRESHOLD_MS``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# What identifies a read: stream, group, consumer, count, block ms.
ReadKey = tuple[str, str, str, int, int]


class ReadsAhead(Generic[T]):
    """Reads issued ahead, per reader; asyncio side (called through ``bridge.call``)."""

    def __init__(self) -> None:
        self._readers: dict[tuple[str, str, str], _Chain[T]] = {}

    async def read(
        self,
        key: ReadKey,
        start: str,
        depth: int,
        send: Callable[[], Awaitable[T]],
        full: Callable[[T], bool],
    ) -> T:
        """``send()``'s reply, from the oldest read issued ahead if it is this one; after
        a full read of new entries, up to ``depth`` more are issued, one after another."""
        reader = key[:3]
        chain = self._readers.get(reader)
        if chain is not None and not (start == ">" and chain.key == key and chain.depth == depth):
            chain.drop()  # asked differently than foreseen (never, from the consumer)
            chain = None
        if chain is None:
            chain = _Chain(key, depth, send, full)
            if start == ">" and depth > 0:
                self._readers[reader] = chain
        ahead = bool(chain.reads)
        pending = chain.reads.popleft() if ahead else asyncio.ensure_future(send())
        try:
            # A read sent now is cancelled with its caller, a blocking read at shutdown
            # among them; one sent ahead may already have taken entries: it is kept for
            # the next read or ``collect``.
            reply = await (asyncio.shield(pending) if ahead else pending)
        except asyncio.CancelledError:
            if ahead:
                chain.reads.appendleft(pending)
            raise
        except BaseException:
            chain.drop()
            self._readers.pop(reader, None)
            raise
        if start == ">":
            chain.top_up(full(reply))
        return reply

    async def collect(self, reader: tuple[str, str, str], wait_s: float) -> list[T]:
        """The replies of the reads ``reader`` (stream, group, consumer) had sent ahead, in
        order, for a consumer that stops reading (shutdown) to hand on what they took:
        nothing more is sent, a read still in Redis gets ``wait_s``, then what is left
        is cancelled (a read still blocked took nothing)."""
        chain = self._readers.pop(reader, None)
        if chain is None:
            return []
        chain.depth = 0  # no more top-ups
        replies: list[T] = []
        try:
            async with asyncio.timeout(wait_s):
                while chain.reads:
                    replies.append(await asyncio.shield(chain.reads[0]))
                    chain.reads.popleft()
        except Exception:  # timed out, or a read failed: what it took stays pending
            pass
        finally:
            chain.drop()
        return replies

    def drop(self) -> None:
        """Cancel every read issued ahead (the client is closing)."""
        for chain in self._readers.values():
            chain.drop()
        self._readers.clear()


class _Chain(Generic[T]):
    """One reader's reads ahead. The next is sent only once the one before it came back
    full: one XREADGROUP at a time in Redis, so entries come back in id order (reads
    sent at once on two connections can be served the other way round)."""

    def __init__(
        self,
        key: ReadKey,
        depth: int,
        send: Callable[[], Awaitable[T]],
        full: Callable[[T], bool],
    ) -> None:
        self.key, self.depth, self._send, self._full = key, depth, send, full
        self.reads: deque[asyncio.Future[T]] = deque()  # oldest first, not yet collected

    def top_up(self, collected_full: bool) -> None:
        """After a read was collected: send the next if the newest read came back full
        (or, with none left, the collected one did) and fewer than ``depth`` wait."""
        if len(self.reads) >= self.depth:
            return
        if self.reads:
            newest = self.reads[-1]
            if not (newest.done() and self._came_back_full(newest)):
                return  # still in Redis: it sends the next when it comes back
        elif not collected_full:
            return
        read = asyncio.ensure_future(self._send())
        read.add_done_callback(self._came_back)
        self.reads.append(read)

    def _came_back(self, read: asyncio.Future[T]) -> None:
        if self.reads and read is self.reads[-1] and self._came_back_full(read):
            self.top_up(True)

    def _came_back_full(self, read: asyncio.Future[T]) -> bool:
        # A failed read's caller gets its error; nothing more is sent after it.
        return not read.cancelled() and read.exception() is None and self._full(read.result())

    def drop(self) -> None:
        for read in self.reads:
            read.cancel()
            # A read that failed before it was dropped: its error is nobody's to raise.
            read.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.reads.clear()
