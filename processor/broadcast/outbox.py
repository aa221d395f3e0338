"""A client's bounded outbox: frames wait here until the client's writer sends them.

Why not a memory channel: when a client falls behind, the fix of a device it has not
been sent yet is worth nothing once a newer one exists (a map shows the latest), so a
full outbox *replaces* the unsent frame of the same device in place. That needs access
to unsent items, which a channel does not give. ``push`` never blocks, like
``send_nowait``: the fan-out never waits for a client. When even coalescing cannot make
room (more distinct devices or control frames pending than the capacity), the outbox
is marked overflowed and the writer closes the client (code 1013).

The writer takes everything pending at once (``get_many``, bounded in bytes) so that it
can send it in one write; what it leaves stays here, still subject to coalescing.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sized
from typing import Generic, TypeVar

import attrs
import trio

# A frame: anything with a length (its size on the wire, for ``get_many``'s limit).
T = TypeVar("T", bound=Sized)


class ClientTooSlow(Exception):
    """The client cannot keep up: its outbox overflowed or a send took too long."""


@attrs.define
class Outbox(Generic[T]):
    capacity: int
    # Told how many frames each coalescing replaced or dropped (a metric).
    on_coalesced: Callable[[int], None] | None = attrs.field(default=None, kw_only=True)
    # seq -> (coalescing key or None for frames that are never replaced, frame)
    _items: OrderedDict[int, tuple[Hashable | None, T]] = attrs.field(
        factory=OrderedDict, init=False
    )
    # key -> the seq of its newest queued frame. Only coalescing needs it, and only a
    # full outbox coalesces: so it is built when the outbox first fills and kept until
    # it empties, and a client that keeps up never pays for it (``_latest_seqs``).
    _latest: dict[Hashable, int] | None = attrs.field(default=None, init=False)
    _seq: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _wakeup: trio.Event = attrs.field(factory=trio.Event, init=False)
    _waiting: bool = attrs.field(default=False, init=False)  # a writer waits on _wakeup
    overflowed: bool = attrs.field(default=False, init=False)
    coalesced: int = attrs.field(default=0, init=False)  # frames replaced or dropped

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: T, key: Hashable | None = None) -> bool:
        """Queue a frame; False (and overflowed) when the client cannot keep up.

        ``key`` names what a newer frame supersedes (event and device of a position);
        frames without a key (snapshots, replies) are never dropped.
        """
        if self.overflowed:
            return False
        if len(self._items) >= self.capacity:
            return self._push_full(frame, key)
        seq = next(self._seq)
        self._items[seq] = (key, frame)
        if key is not None and self._latest is not None:
            self._latest[key] = seq
        if self._waiting:  # else the writer finds the frame before it waits
            self._wakeup.set()
        return True

    def _push_full(self, frame: T, key: Hashable | None) -> bool:
        latest = self._latest_seqs()
        old = latest.get(key) if key is not None else None
        if old is not None:
            self._items[old] = (key, frame)  # in place: the device keeps its turn
            self._count_coalesced(1)
            return True
        self._compact(latest)
        if len(self._items) >= self.capacity:
            self.overflowed = True
            self._wakeup.set()
            return False
        return self.push(frame, key)

    def _latest_seqs(self) -> dict[Hashable, int]:
        if self._latest is None:
            # In seq order, so each key ends at its newest frame.
            self._latest = {key: seq for seq, (key, _) in self._items.items() if key is not None}
        return self._latest

    def _compact(self, latest: dict[Hashable, int]) -> None:
        """Drop every keyed frame that a newer frame of the same key supersedes."""
        stale = [
            seq for seq, (key, _) in self._items.items() if key is not None and latest[key] != seq
        ]
        for seq in stale:
            del self._items[seq]
        self._count_coalesced(len(stale))

    def _count_coalesced(self, n: int) -> None:
        if n:
            self.coalesced += n
            if self.on_coalesced is not None:
                self.on_coalesced(n)

    def fail(self) -> None:
        """Mark the client as unable to keep up (decided elsewhere, e.g. a held backlog)."""
        self.overflowed = True
        self._wakeup.set()

    async def get(self) -> T:
        """The oldest frame; waits while empty. Raises ``ClientTooSlow`` once overflowed."""
        return (await self.get_many(0))[0]

    async def get_many(self, max_bytes: int) -> list[T]:
        """The oldest frames, in order, up to ``max_bytes`` (at least one); waits while empty.

        Raises ``ClientTooSlow`` once overflowed.
        """
        while True:
            if self.overflowed:
                raise ClientTooSlow(f"more than {self.capacity} frames queued after coalescing")
            if self._items:
                return self._take(max_bytes)
            self._wakeup = trio.Event()
            self._waiting = True
            try:
                await self._wakeup.wait()
            finally:
                self._waiting = False

    def _take(self, max_bytes: int) -> list[T]:
        items = self._items
        out: list[T] = []
        size = 0
        for _, frame in items.values():
            n = len(frame)
            if out and size + n > max_bytes:
                break
            out.append(frame)
            size += n
        if len(out) == len(items):  # the usual case: everything pending fits one write
            items.clear()
            self._latest = None
            return out
        latest = self._latest
        for _ in out:
            seq, (key, _) = items.popitem(last=False)
            if latest is not None and key is not None and latest.get(key) == seq:
                del latest[key]
        return out
