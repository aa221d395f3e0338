"""XREADGROUPs kept queued in Redis while a backlog drains: Redis serves the next reads
while this one is decoded.

Draining a backlog, the consumer read 1,000 entries, decoded them (~3 ms), handed them
on and only then asked for the next 1,000; the process was idle ~13 % of a drain's wall
time, the consumer waiting on Redis and a writer waiting for a batch (bench/README.md,
"Reads queued ahead"). Sending the next read only when a reply is taken does not fix
it: the ~480 KB reply comes in over several loop turns, each behind the thread's other
work, so the next command still left late (measured: a Trio task reading ahead, and an
asyncio-side chain that sent each read as the one before came back, gained nothing).

So after a full read of new entries (``>``), the case where the consumer reads again at
once anyway (``read_pacing``), ``depth`` (``READ_AHEAD``) more XREADGROUPs are written
on the reader's own connection before its reply is read: Redis runs a connection's
commands one after another, so the next replies are built while this one is decoded,
and they come back in the order sent, i.e. in id order (two reads sent at once on two
connections were seen served the other way round). A short read means the consumer
has caught up: nothing more is sent, and a read already queued is simply its next one.

Entries a queued read took are delivered to this consumer like any read's, so at
shutdown the consumer collects them (``collect``) and hands them on before the writers
drain: stopping sends no new reads, but finishes the ones already sent. Should that
fail (Redis gone, a read still blocked, the budget spent), the connection is closed
and they stay pending for this consumer name: the next start reads them first, as
after a crash, and another instance's claimer takes them after ``CLAIM_THRESHOLD_MS``.
A read cancelled halfway (shutdown, a deadline) goes on being read in the background,
for ``collect`` or the next read; only a read the caller sent itself and found blocked
(caught up: it took nothing) is cancelled, by closing the connection, as redis-py does
for any read it abandons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool

from processor.core.model import RawEntry

# What identifies a reader: stream, group, consumer.
Reader = tuple[str, str, str]


class ReadsAhead:
    """Per reader, a connection of its own with reads queued on it; asyncio side
    (called through ``bridge.call``)."""

    def __init__(self, pool: ConnectionPool, shape: Callable[[Any], list[RawEntry]]) -> None:
        self._pool = pool
        self._shape = shape  # the reply as callers get it (``_group_reply``)
        self._pipes: dict[Reader, _Pipe] = {}

    async def read(self, reader: Reader, count: int, block_ms: int, depth: int) -> list[RawEntry]:
        """``XREADGROUP GROUP g c COUNT count BLOCK block_ms STREAMS s >``'s reply, the
        oldest queued one if there is one; after a full reply, ``depth`` more are
        queued before it is returned."""
        pipe = self._pipes.get(reader)
        if pipe is None:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            pipe = self._pipes[reader] = _Pipe(reader, conn)
        pipe.ask(count, block_ms)  # reads already queued keep what they asked for
        keep = False  # on cancellation: True while reading a reply queued earlier
        try:
            if not pipe.queued:
                await pipe.send()
            else:
                keep = True
            raw = await pipe.take()
            keep = False
            reply = self._shape(raw)
            if len(reply) >= count:
                while pipe.queued < depth:
                    await pipe.send()
        except asyncio.CancelledError:
            # A read queued before this call may have taken entries: its reply goes on
            # being read (``take``), for the next read or ``collect``. Cancelled at any
            # other point, the reader's connection is closed, as redis-py closes one
            # whose read it abandons: a read this call sent is cancelled in Redis (it
            # was blocked, the reader having caught up, or what it took stays pending).
            if not keep:
                await self._close(reader)
            raise
        except BaseException:
            await self._close(reader)
            raise
        if not pipe.queued:  # caught up: the connection goes back to the pool
            await self._release(reader)
        return reply

    async def collect(self, reader: Reader, wait_s: float) -> list[list[RawEntry]]:
        """The replies of the reads ``reader`` has queued, in order, for a consumer that
        stops reading (shutdown) to hand on: nothing more is sent; a read still in
        Redis gets ``wait_s``, then the connection is closed (a blocked read took
        nothing)."""
        pipe = self._pipes.get(reader)
        if pipe is None:
            return []
        replies: list[list[RawEntry]] = []
        try:
            async with asyncio.timeout(wait_s):
                while pipe.queued:
                    replies.append(self._shape(await pipe.take()))
        except Exception:  # timed out, or a read failed: what it took stays pending
            await self._close(reader)
            return replies
        await self._release(reader)
        return replies

    async def close(self) -> None:
        """Close every reader's connection (the client is closing)."""
        for reader in list(self._pipes):
            await self._close(reader)

    async def _release(self, reader: Reader) -> None:
        """Back to the pool: nothing is queued on it any more."""
        await self._pool.release(self._pipes.pop(reader).conn)

    async def _close(self, reader: Reader) -> None:
        """Drop a reader's connection with whatever is queued on it: its replies can no
        longer be told apart from the next command's."""
        pipe = self._pipes.pop(reader, None)
        if pipe is not None:
            pipe.drop()
            await pipe.conn.disconnect(nowait=True)
            await self._pool.release(pipe.conn)


class _Pipe:
    """One reader's connection and how many reads are queued on it (sent, unread)."""

    def __init__(self, reader: Reader, conn: AbstractConnection):
        self.reader, self.conn = reader, conn
        self.queued = 0
        self._asked: tuple[int, int] | None = None
        self._command: list[bytes] = []
        self._taking: asyncio.Future[Any] | None = None  # a reply being read

    def ask(self, count: int, block_ms: int) -> None:
        """The read the next ``send`` sends."""
        if self._asked != (count, block_ms):
            stream, group, consumer = self.reader
            self._asked = (count, block_ms)
            self._command = self.conn.pack_command(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms,
                "STREAMS", stream, ">",
            )  # fmt: skip

    async def send(self) -> None:
        await self.conn.send_packed_command(self._command, check_health=False)
        self.queued += 1

    async def take(self) -> Any:
        """The oldest queued read's reply. Read on in a task of its own: a caller
        cancelled halfway leaves it to the next ``take`` instead of half read."""
        if self._taking is None:
            self._taking = asyncio.ensure_future(self.conn.read_response())
        raw = await asyncio.shield(self._taking)
        self._taking = None
        self.queued -= 1
        return raw

    def drop(self) -> None:
        if self._taking is not None:
            self._taking.cancel()
            # Its error (the connection closed under it) is nobody's to raise.
            self._taking.add_done_callback(lambda f: f.cancelled() or f.exception())
