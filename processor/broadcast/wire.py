"""Server -> client text frames as WebSocket bytes: encoded once, written in batches.

Why: with 25 clients per event, encoding every message once per client (wsproto) and
one stream write per message (a syscall and a Trio checkpoint each) were most of the
fan-out's CPU. Server frames are unmasked (RFC 6455 section 5.1), so a text frame's
bytes are the same for every recipient: the hub encodes a frame once (``TextFrame``)
and each client's writer joins what is pending in its outbox into one write. It is
still one JSON message per WebSocket frame, as the live protocol says; only the TCP
writes are fewer.

trio-websocket has no public way to write pre-encoded frames, so ``RawWriter`` reaches
into it; that reliance is all in ``raw_writer``. The handshake, pings, pongs and the
close handshake stay trio-websocket's, and a raw write holds trio-websocket's own send
lock, so neither can ever cut into the other's frame.

A write usually fits in the kernel's send buffer, and then it is done without yielding
to the scheduler: the lock taken with ``acquire_nowait``, the bytes handed to the socket
with one non-blocking ``os.write``. Going through ``async with lock`` and
``SocketStream.send_all`` instead costs two scheduler round trips per write (each of
them checkpoints), which at ~10,000 writes a second was most of the fan-out's CPU
(bench/README.md, fan-out). Only what the socket does not take at once, or a write that
finds the lock held, takes the awaiting path, under the send deadline.
"""

from __future__ import annotations

import math
import os
import struct

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto import WSConnection
from wsproto.connection import ConnectionState

_FIN_TEXT = 0x81  # FIN, no RSV bits (no extension), opcode 1 (text)


def encode_text(text: str) -> bytes:
    """One complete, unmasked WebSocket text frame (what a server sends) for ``text``."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _FIN_TEXT, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return header + payload


@attrs.frozen
class TextFrame:
    """A frame's JSON text and its wire bytes, shared by every client it goes to."""

    text: str
    data: bytes

    @classmethod
    def of(cls, text: str) -> TextFrame:
        return cls(text, encode_text(text))

    def __len__(self) -> int:  # the outbox's batch limit counts wire bytes
        return len(self.data)


# What the fan-out hands a client: pre-encoded, or a text that only it receives.
Frame = str | TextFrame


@attrs.frozen
class RawWriter:
    """Writes pre-encoded frames to one connection, under trio-websocket's send lock."""

    ws: WebSocketConnection
    lock: trio.StrictFIFOLock
    stream: trio.abc.Stream
    protocol: WSConnection
    # The socket for the non-blocking first attempt (None: a stream that is not a plain
    # socket, e.g. TLS, always takes the awaiting path).
    socket: trio.socket.SocketType | None = None

    async def send(self, data: bytes, deadline_s: float = math.inf) -> None:
        """Write whole frames; ``ConnectionClosed`` once trio-websocket is closing.

        Raises ``trio.TooSlowError`` if the part the socket did not take at once is
        still unsent after ``deadline_s``: half a frame is then on the wire. The state
        is checked under the lock: trio-websocket marks the connection closing before
        it queues a close frame, so no data frame follows a close.
        """
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            with trio.fail_after(deadline_s):
                await self.lock.acquire()
        try:
            if self.ws.closed is not None or self.protocol.state is not ConnectionState.OPEN:
                raise ConnectionClosed(self.ws.closed)
            sent = self._write_now(data)
            if sent < len(data):
                with trio.fail_after(deadline_s):
                    await self.stream.send_all(memoryview(data)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(self.ws.closed) from None
        finally:
            self.lock.release()

    def _write_now(self, data: bytes) -> int:
        """What the socket takes of ``data`` without blocking (its sockets are non-blocking)."""
        # Asked each time, not kept: a closed socket says -1, and its old number may
        # already belong to another connection.
        fd = -1 if self.socket is None else self.socket.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError:  # reset, broken pipe (SIGPIPE is ignored in Python), closed
            raise ConnectionClosed(self.ws.closed) from None


def raw_writer(ws: WebSocketConnection) -> RawWriter | None:
    """A raw writer for an open connection, or None to use ``send_message`` instead.

    Relies on private attributes, because trio-websocket (0.12) has no public API for
    pre-encoded frames: its ``_stream`` (the byte stream), ``_stream_lock`` (the lock its
    own ``_send`` holds around every write, pings, pongs and close included) and
    ``_wsproto`` (the protocol state; its ``Connection._proto.extensions`` are the
    negotiated extensions). With an extension such as permessage-deflate active the
    frame bytes would differ per connection, so there is no raw writer then (this
    trio-websocket never accepts one on the server side, but a new version might).
    ``tests/broadcast/test_wire.py`` fails if any of these change.
    """
    protocol = ws._wsproto
    connection = protocol.connection
    if connection is None or connection._proto.extensions:
        return None
    stream = ws._stream
    socket = stream.socket if isinstance(stream, trio.SocketStream) else None
    return RawWriter(ws, ws._stream_lock, stream, protocol, socket)
