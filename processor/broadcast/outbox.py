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
    # (coalescing key or None for frames that are never replaced, frame), oldest first.
    # A list: a batch goes in with one ``extend`` and a take-all is one ``clear``.
    _items: list[tuple[Hashable | None, T]] = attrs.field(factory=list, init=False)
    # key -> the index in ``_items`` of its newest queued frame. Only coalescing needs
    # it, and only a full outbox coalesces: so it is built when the outbox fills and
    # dropped when a take moves the indices, and a client that keeps up never pays for
    # it (``_latest_index``).
    _latest: dict[Hashable, int] | None = attrs.field(default=None, init=False)
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
        items = self._items
        if len(items) >= self.capacity:
            return self._push_full(frame, key)
        if key is not None and self._latest is not None:
            self._latest[key] = len(items)
        items.append((key, frame))
        if self._waiting:  # else the writer finds the frame before it waits
            self._wakeup.set()
        return True

    def push_many(self, keyed: list[tuple[Hashable | None, T]]) -> bool:
        """``push`` of each ``(key, frame)`` in order; False as soon as one is refused.

        While there is room and no coalescing index (a client that keeps up) the batch
        goes in with one ``extend``; otherwise one ``push`` at a time."""
        if (
            self._latest is not None
            or self.overflowed
            or len(self._items) + len(keyed) > self.capacity
        ):
            return all(self.push(frame, key) for key, frame in keyed)
        self._items.extend(keyed)
        if keyed and self._waiting:
            self._wakeup.set()
        return True

    def _push_full(self, frame: T, key: Hashable | None) -> bool:
        latest = self._latest_index()
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

    def _latest_index(self) -> dict[Hashable, int]:
        if self._latest is None:
            # In queue order, so each key ends at its newest frame.
            self._latest = {key: i for i, (key, _) in enumerate(self._items) if key is not None}
        return self._latest

    def _compact(self, latest: dict[Hashable, int]) -> None:
        """Drop every keyed frame that a newer frame of the same key supersedes."""
        items = self._items
        kept = [item for i, item in enumerate(items) if item[0] is None or latest[item[0]] == i]
        if len(kept) < len(items):
            self._items = kept
            self._latest = None  # the indices moved
            self._count_coalesced(len(items) - len(kept))

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
        for _, frame in items:
            n = len(frame)
            if out and size + n > max_bytes:
                break
            out.append(frame)
            size += n
        if len(out) == len(items):  # the usual case: everything pending fits one write
            items.clear()
        else:
            del items[: len(out)]
        self._latest = None  # empty, or the indices moved: rebuilt if it fills again
        return out
