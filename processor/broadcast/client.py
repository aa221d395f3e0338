"""One authenticated WebSocket client: its outbox, writer, heartbeat and how it closes.

Three tasks per client in one nursery: the writer (outbox -> socket), the heartbeat
(ping every ``WS_PING_INTERVAL_S``, close when no pong within ``WS_PING_TIMEOUT_S``) and
the receiver (client messages -> ``Session``). Whichever decides the connection is over
calls ``close_with(code)``: the first code wins and the nursery is cancelled; the close
frame is then sent once, shielded, with its own deadline, so shutdown cannot cut it off
and a dead peer cannot hold it.

A client that cannot keep up (its outbox overflows even after coalescing) is counted at
once and closed by its writer with 1013 after the frame in flight, so a client that is
slow but still reading sees a clean close. A frame still unsent after the send deadline,
or cut by cancellation, leaves half a frame on the wire: no close frame can follow it,
so the TCP connection is dropped instead (the peer sees 1006).

The writer sends whatever is pending in the outbox (up to ``WRITE_BATCH_BYTES``) as
pre-encoded frames in one stream write (``wire``); the send deadline applies to that
write. Only if a connection cannot take raw frames (an extension is active) does it fall
back to trio-websocket's ``send_message``, one message at a time.

Resource handling: the caller owns the ``WebSocketConnection``; ``run`` always leaves it
closed. Error handling: a closed connection ends ``run`` quietly; anything else
propagates (a bug should crash the tree, not be logged and forgotten).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.outbox import ClientTooSlow, Outbox
from processor.broadcast.wire import Frame, RawWriter, TextFrame, raw_writer

GOING_AWAY = 1001
INTERNAL = 1011  # also used for a missed heartbeat, like python-websockets does
TRY_AGAIN_LATER = 1013
UNAUTHORIZED = 4401
# How long a close handshake may take before the TCP connection is simply dropped.
CLOSE_GRACE_S = 1.0
# At most this much is joined into one write (a frame larger than it goes alone): enough
# to make writes few, small enough that the send deadline still measures a stuck peer.
WRITE_BATCH_BYTES = 256 * 1024


async def close_connection(ws: WebSocketConnection, code: int, reason: str) -> None:
    """Send a close frame and wait briefly for the answer; shielded, bounded."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S):
        await ws.aclose(code, reason)


async def abort_connection(ws: WebSocketConnection) -> None:
    """Drop the TCP connection without a close frame (the stream is mid-frame).

    trio-websocket has no public abort; ``aclose`` in a cancelled scope is one: it gives
    up before writing the close frame and its cleanup closes the stream.
    """
    with trio.CancelScope(shield=True), trio.CancelScope() as scope:
        scope.cancel()
        await ws.aclose(TRY_AGAIN_LATER)


@attrs.define(eq=False)
class Client:
    ws: WebSocketConnection
    user_id: str
    outbox_capacity: int
    metrics: BroadcastMetrics
    ping_interval_s: float
    ping_timeout_s: float
    # One send longer than this means the client's TCP window has been shut for that
    # long: it is not reading, and holding it would only grow the server's buffers.
    send_deadline_s: float
    outbox: Outbox[TextFrame] = attrs.field(init=False)
    close_code: int = attrs.field(default=1000, init=False)
    close_reason: str = attrs.field(default="", init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _slow: bool = attrs.field(default=False, init=False)
    _in_flight: bool = attrs.field(default=False, init=False)  # a send was cut short
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = Outbox(self.outbox_capacity, on_coalesced=self.metrics.frames_coalesced.inc)

    def push(self, frame: Frame, key: Hashable | None = None) -> None:
        """Queue a frame; a text (a reply, a snapshot: one recipient) is encoded here."""
        if isinstance(frame, str):
            frame = TextFrame.of(frame)
        if not self.outbox.push(frame, key):
            self.too_slow("outbox overflowed after coalescing")

    def push_many(self, keyed: list[tuple[Hashable, TextFrame]]) -> int:
        """Queue pre-encoded position frames with their coalescing keys, in order; the
        frames now queued."""
        if not self.outbox.push_many(keyed):
            self.too_slow("outbox overflowed after coalescing")
        return self.queued()

    def queued(self) -> int:
        return len(self.outbox)

    def too_slow(self, why: str) -> None:
        """Count the client as too slow once; its writer closes it with 1013."""
        if not self._slow:
            self._slow = True
            self.metrics.slow_closed.inc()
            self.close_reason = why
        self.outbox.fail()

    def close_with(self, code: int, reason: str = "") -> None:
        """End the connection with ``code`` (the first caller's code wins)."""
        if not self._closing:
            self._closing = True
            self.close_code, self.close_reason = code, reason
        self._scope.cancel()

    async def run(self, receive: Callable[[str | bytes], Awaitable[None]]) -> None:
        """Serve until a close is decided, then close the connection with its code."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._receiver, receive)
        finally:
            if self._in_flight:
                await abort_connection(self.ws)
            else:
                await close_connection(self.ws, self.close_code, self.close_reason)

    async def _writer(self) -> None:
        raw = raw_writer(self.ws)
        while True:
            try:
                batch = await self.outbox.get_many(WRITE_BATCH_BYTES)
            except ClientTooSlow:
                self.close_with(TRY_AGAIN_LATER, self.close_reason or "too slow")
                return
            self._in_flight = True
            try:
                await self._send(raw, batch)
            except trio.TooSlowError:
                self.too_slow(f"a write took over {self.send_deadline_s:g} s to send")
                self.close_with(TRY_AGAIN_LATER, self.close_reason)
                return
            except ConnectionClosed:
                self._in_flight = False
                self.close_with(1000)
                return
            self._in_flight = False
            self.metrics.frames_sent.inc(len(batch))
            self.metrics.writes.inc()

    async def _send(self, raw: RawWriter | None, batch: list[TextFrame]) -> None:
        """One write of the whole batch; ``trio.TooSlowError`` past the send deadline."""
        if raw is not None:
            data = batch[0].data if len(batch) == 1 else b"".join(f.data for f in batch)
            await raw.send(data, self.send_deadline_s)
            return
        with trio.fail_after(self.send_deadline_s):
            for frame in batch:
                await self.ws.send_message(frame.text)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.ping_interval_s)
            try:
                with trio.move_on_after(self.ping_timeout_s) as scope:
                    await self.ws.ping()
            except ConnectionClosed:
                self.close_with(1000)
                return
            if scope.cancelled_caught:
                self.close_with(INTERNAL, "ping timeout")
                return

    async def _receiver(self, receive: Callable[[str | bytes], Awaitable[None]]) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                self.close_with(1000)  # the peer closed, or a frame over the size limit
                return
            await receive(message)
