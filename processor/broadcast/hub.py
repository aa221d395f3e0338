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
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from processor.broadcast import frames
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.roster import Roster, RosterKeeper
from processor.broadcast.subscription import Keyed, Offer, Subscription
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
        """Fan one decoded fix out (``publish_many`` of one)."""
        self.publish_many([(position, stream_id)])

    def publish_many(self, fixes: Sequence[tuple[Position, str | None]]) -> int:
        """Fan decoded fixes (in stream order) out to every subscription of the events
        their devices are in: each event's frames go to each of its subscriptions in one
        hand-off (a list extend per outbox), not three Python calls per frame and client
        (``bench.frame_path``). A device's frames keep their order; frames of different
        events to one client may be reordered within the batch, which the live protocol
        allows (its order guarantees are per device).

        Returns how many frames the fullest outbox it handed frames to now holds, so the
        tail knows when to let the writers send (``StreamTail.yield_at``)."""
        roster = self.roster.current
        if roster is not self._last_roster:
            self._forget_unentered(roster)
        by_device = roster.by_device
        last = self.last
        subscribers = self._subscribers
        per_event: dict[str, tuple[list[Offer], list[Keyed]]] = {}
        handed: list[str] = []  # stream ids of the fixes with a frame, for the latency
        for position, stream_id in fixes:
            if not position.fix_valid:
                continue
            device_id = position.device_id
            entries = by_device.get(device_id)
            if not entries:
                continue
            previous = last.get(device_id)
            if previous is not None and position.ts <= previous.ts:
                continue  # late: stored by the pipeline, never broadcast as live
            last[device_id] = position
            body: dict[str, Any] | None = None
            for event_id, entry_id in entries:
                if event_id not in subscribers:
                    continue
                if body is None:
                    body = frames.position_body(position, entry_id, self.attributes(position))
                text = frames.position_frame(event_id, {**body, "entry_id": entry_id})
                keyed: Keyed = ((event_id, device_id), TextFrame.of(text))
                batch = per_event.get(event_id)
                if batch is None:
                    batch = per_event[event_id] = ([], [])
                batch[0].append((device_id, position.ts, keyed))
                batch[1].append(keyed)
            if body is not None and stream_id is not None:
                handed.append(stream_id)
        fullest = 0
        for event_id, (offers, keyed_frames) in per_event.items():
            for sub in list(subscribers.get(event_id, ())):
                queued = sub.offer_many(offers, keyed_frames)
                if queued > fullest:
                    fullest = queued
        if handed:
            now = time.time()
            for stream_id in handed:
                delay = now - entry_id_millis(stream_id) / 1000
                self.metrics.fanout_latency.observe(max(delay, 0.0))
        return fullest

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
