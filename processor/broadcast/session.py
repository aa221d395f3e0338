"""The client -> server messages of the contract: subscribe, unsubscribe, ping.

Messages of one client are handled one at a time, in order: a subscribe (a Directus
check and maybe a snapshot query) holds up only that client's next message, and a
subscribe followed by an unsubscribe can never be applied the other way round.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import structlog

from processor.broadcast import frames
from processor.broadcast.client import TRY_AGAIN_LATER, Client
from processor.broadcast.directus import Credential, Directus, DirectusUnavailable
from processor.broadcast.hub import Hub
from processor.broadcast.snapshot import Snapshots
from processor.broadcast.subscription import Subscription


@attrs.define
class Session:
    client: Client
    credential: Credential
    hub: Hub
    directus: Directus
    snapshots: Snapshots
    max_subscriptions: int
    log: structlog.typing.FilteringBoundLogger
    subscriptions: dict[str, Subscription] = attrs.field(factory=dict)

    async def receive(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._error("bad_request", "binary frames are not part of the protocol")
            return
        try:
            msg: Any = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._error("bad_request", "not JSON")
            return
        if type(msg) is not dict:
            self._error("bad_request", "not a JSON object")
            return
        kind, req = msg.get("type"), msg.get("req")
        if kind == "ping":
            self.client.push(frames.pong_frame(req))
        elif kind == "subscribe":
            await self._subscribe(msg.get("event_id"), req)
        elif kind == "unsubscribe":
            self._unsubscribe(msg.get("event_id"), req)
        else:
            self._error("bad_request", "unknown message type", req)

    def close(self) -> None:
        """Forget every subscription (the connection is over)."""
        for subscription in self.subscriptions.values():
            self.hub.remove(subscription)
        self.subscriptions.clear()

    async def _subscribe(self, raw_event_id: object, req: object) -> None:
        event_id = frames.event_id_of(raw_event_id)
        if event_id is None:
            self._error("bad_request", "event_id must be an id", req)
            return
        previous = self.subscriptions.pop(event_id, None)
        if previous is not None:  # subscribing again: a fresh snapshot
            self.hub.remove(previous)
        elif len(self.subscriptions) >= self.max_subscriptions:
            self._error(
                "too_many_subscriptions", f"at most {self.max_subscriptions}", req, event_id
            )
            return
        try:
            allowed = await self.directus.may_read_event(self.credential, event_id)
        except DirectusUnavailable as exc:
            self.log.warning("directus unavailable on subscribe", error=str(exc))
            self.client.close_with(TRY_AGAIN_LATER, "directus unavailable")
            return
        if not allowed:
            self._error("forbidden", "no access to this event", req, event_id)
            return
        # Registered before the snapshot is read: fixes arriving meanwhile are held.
        subscription = Subscription(self.client, event_id)
        self.hub.add(subscription)
        self.subscriptions[event_id] = subscription
        bodies, floor = await self.snapshots.build(event_id)
        subscription.release(frames.snapshot_frame(event_id, bodies, req), floor)

    def _unsubscribe(self, raw_event_id: object, req: object) -> None:
        event_id = frames.event_id_of(raw_event_id)
        if event_id is None:
            self._error("bad_request", "event_id must be an id", req)
            return
        subscription = self.subscriptions.pop(event_id, None)
        if subscription is not None:
            self.hub.remove(subscription)
        self.client.push(frames.unsubscribed_frame(event_id))

    def _error(
        self, code: str, message: str, req: object = None, event_id: str | None = None
    ) -> None:
        self.client.push(frames.error_frame(code, message, req, event_id))
