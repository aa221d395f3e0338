"""One client's subscription to one event, and how it joins snapshot and live frames.

The contract promises no gap and no regression between the snapshot and the live feed.
The subscription is registered with the hub *before* the snapshot is built, so a fix
that arrives while the snapshot query runs is held in ``_held`` instead of being lost or
sent ahead of the snapshot. ``release`` then queues the snapshot and the held frames, and
from then on a device's frame passes only if it is newer than that device's fix in the
snapshot (its ``floor``). The hub already drops fixes older than the last one it
broadcast, so after the first frame that passes a floor the floor is no longer needed.
Timing frames are held the same way (never coalesced, never dropped): whatever a client
gets for an event comes after that event's snapshot.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Protocol

import attrs

from processor.broadcast.wire import Frame, TextFrame

# (device, fix time, frame) of a position held during the snapshot, or a bare frame
# (timing) that no newer frame replaces.
Held = tuple[str, datetime, Frame] | Frame
# A position frame with its coalescing key, ``(event_id, device_id)``, as an outbox holds it.
Keyed = tuple[Hashable, TextFrame]
# What the hub offers per position: device, fix time and the keyed frame.
Offer = tuple[str, datetime, Keyed]


class Recipient(Protocol):
    """What a subscription needs of its client: a non-blocking push into its outbox."""

    outbox_capacity: int

    def push(self, frame: Frame, key: Hashable | None = None) -> None: ...

    def push_many(self, keyed: list[Keyed]) -> int: ...  # the frames then queued

    def queued(self) -> int: ...

    def too_slow(self, why: str) -> None: ...


@attrs.define(eq=False)
class Subscription:
    client: Recipient
    event_id: str
    _held: list[Held] | None = attrs.field(factory=list, init=False)
    _floor: dict[str, datetime] = attrs.field(factory=dict, init=False)

    @property
    def live(self) -> bool:
        return self._held is None

    def offer(self, device_id: str, ts: datetime, text: Frame, key: Hashable | None = None) -> None:
        """A live position frame for this event (called by the hub, never blocks).
        ``key``: its coalescing key, ``(event_id, device_id)``, which the hub makes once
        for all of an event's subscriptions (None: made here)."""
        if self._held is None:
            if self._floor and not self._above_floor(device_id, ts):
                return
            self.client.push(text, (self.event_id, device_id) if key is None else key)
            return
        self._hold(self._held, (device_id, ts, text))

    def offer_many(self, offers: list[Offer], keyed: list[Keyed]) -> int:
        """``offer`` for a batch of the event's positions (the hub's, in stream order);
        ``keyed`` is the same frames as the outbox takes them, shared by every
        subscription of the event. Returns the frames now queued for the client (held
        ones, while the snapshot is built)."""
        if self._held is None and not self._floor:
            return self.client.push_many(keyed)  # the usual case: one hand-off
        for device_id, ts, (key, frame) in offers:
            self.offer(device_id, ts, frame, key)
        return self.client.queued() if self._held is None else len(self._held)

    def offer_unkeyed(self, text: Frame) -> None:
        """A frame that no newer one replaces (timing); after the snapshot, like fixes."""
        if self._held is None:
            self.client.push(text)
            return
        self._hold(self._held, text)

    def _hold(self, held: list[Held], item: Held) -> None:
        held.append(item)
        if len(held) > self.client.outbox_capacity:
            self._held = held = _coalesced(held)
            if len(held) > self.client.outbox_capacity:
                self.client.too_slow("too many frames while the snapshot was built")

    def release(self, snapshot: str, floor: Mapping[str, datetime]) -> None:
        """Queue the snapshot, then the frames held meanwhile that are newer than it."""
        held, self._held = self._held or [], None
        self._floor = dict(floor)
        self.client.push(snapshot)
        for item in held:
            if isinstance(item, tuple):
                self._deliver(*item)
            else:
                self.client.push(item)

    def _deliver(self, device_id: str, ts: datetime, text: Frame) -> None:
        if self._above_floor(device_id, ts):
            self.client.push(text, (self.event_id, device_id))

    def _above_floor(self, device_id: str, ts: datetime) -> bool:
        """Newer than the device's fix in the snapshot (then the floor is done with)."""
        floor = self._floor.get(device_id)
        if floor is None:
            return True
        if ts <= floor:
            return False
        del self._floor[device_id]
        return True


def _coalesced(held: list[Held]) -> list[Held]:
    """Each device's newest held fix, at its first fix's place; bare frames all kept."""
    newest = {item[0]: item for item in held if isinstance(item, tuple)}
    out: list[Held] = []
    for item in held:
        if not isinstance(item, tuple):
            out.append(item)
        elif item[0] in newest:
            out.append(newest.pop(item[0]))
    return out
