"""The fan-out: who is subscribed to what, and each new fix handed to them.

The stream tail calls ``publish`` for every decoded record; it runs synchronously and
only pushes into outboxes, so a slow or dead client can never hold up the tail or its
neighbours. Each frame is encoded to its WebSocket bytes here, once for all its
recipients (``wire.TextFrame``). The hub also keeps the last fix it broadcast per
device: it is the no-regression rule (a late fix, older than or as old as the last one
sent, is stored by the pipeline but not broadcast as live) and half of the in-memory
snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from processor.broadcast import frames
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.roster import Roster, RosterKeeper
from processor.broadcast.subscription import Subscription
from processor.broadcast.wire import TextFrame
from processor.core.model import Position, entry_id_millis

# Named, derived attributes of a fix (the race domain's IO mapping); same signature as
# ``processor.core.observer.Enricher.derive`` so an enricher's method plugs in as is.
AttributeSource = Callable[[Position], Mapping[str, Any] | None]


def no_attributes(position: Position) -> Mapping[str, Any] | None:
    """Until the race domain's IO mapping is wired in, positions carry ``attrs: {}``."""
    return None


@attrs.define
class Hub:
    roster: RosterKeeper
    metrics: BroadcastMetrics
    attributes: AttributeSource = no_attributes
    _subscribers: dict[str, set[Subscription]] = attrs.field(factory=dict, init=False)
    # The last fix broadcast per device, for the devices of the roster it was pruned to
    # (``_forget_unentered``): bounded by the roster, not by every device ever entered.
    last: dict[str, Position] = attrs.field(factory=dict, init=False)
    _last_roster: Roster | None = attrs.field(default=None, init=False)

    def add(self, subscription: Subscription) -> None:
        self._subscribers.setdefault(subscription.event_id, set()).add(subscription)
        self.metrics.subscriptions.inc()

    def remove(self, subscription: Subscription) -> None:
        subs = self._subscribers.get(subscription.event_id)
        if subs is None or subscription not in subs:
            return
        subs.discard(subscription)
        if not subs:
            del self._subscribers[subscription.event_id]
        self.metrics.subscriptions.dec()

    def entered(self) -> Collection[str]:
        """Devices entered in some event: ``publish`` drops every other device's fix."""
        return self.roster.current.by_device.keys()

    def subscribers(self, event_id: str) -> int:
        return len(self._subscribers.get(event_id, ()))

    def publish(self, position: Position, stream_id: str | None = None) -> None:
        """Fan one decoded fix out to every subscription of the events its device is in."""
        if not position.fix_valid:
            return
        device_id = position.device_id
        roster = self.roster.current
        if roster is not self._last_roster:
            self._forget_unentered(roster)
        entries = roster.by_device.get(device_id)
        if not entries:
            return
        last = self.last.get(device_id)
        if last is not None and position.ts <= last.ts:
            return  # late: stored by the pipeline, never broadcast as live
        self.last[device_id] = position
        body: dict[str, Any] | None = None
        handed = False
        for event_id, entry_id in entries:
            subs = self._subscribers.get(event_id)
            if not subs:
                continue
            if body is None:
                body = frames.position_body(position, entry_id, self.attributes(position))
            frame = TextFrame.of(frames.position_frame(event_id, {**body, "entry_id": entry_id}))
            key = (event_id, device_id)
            for sub in list(subs):
                sub.offer(device_id, position.ts, frame, key)
            handed = True
        if handed and stream_id is not None:
            delay = time.time() - entry_id_millis(stream_id) / 1000
            self.metrics.fanout_latency.observe(max(delay, 0.0))

    def _forget_unentered(self, roster: Roster) -> None:
        """A new roster: drop the last fixes of devices it no longer enters. A device
        entered again later starts from its next fix, and its clients from a snapshot."""
        for device_id in [d for d in self.last if d not in roster.by_device]:
            del self.last[device_id]
        self._last_roster = roster

    def publish_timing(self, event_id: str, text: str) -> None:
        """Hand a timing frame to every subscription of the event (never coalesced)."""
        subs = self._subscribers.get(event_id)
        if not subs:
            return
        frame = TextFrame.of(text)
        for sub in list(subs):
            sub.offer_unkeyed(frame)
