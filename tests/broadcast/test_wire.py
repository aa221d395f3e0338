"""Pre-encoded frames: their bytes decode as a client sees them, and raw writes stay safe.

The fan-out writes frames it encoded itself, past trio-websocket's ``send_message``; a
wrong header byte would be seen by every client at once, so the bytes are checked with
wsproto acting as the client (and ``tests/e2e/test_browser.py`` checks them in Chromium).
The second half runs a real trio-websocket server: it fails if the private parts of
trio-websocket that ``wire.raw_writer`` relies on change (attributes, the send lock, the
extensions), and checks that a raw write never interleaves with trio-websocket's own
pings and close frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from processor.broadcast.server import MAX_FRAME_BYTES
from processor.broadcast.wire import RawWriter, TextFrame, encode_text, raw_writer


def client_messages(data: bytes, chunk: int | None = None) -> list[str]:
    """Decode server bytes with wsproto as a client; whole messages only."""
    connection = Connection(ConnectionType.CLIENT)
    step = chunk or len(data) or 1
    texts: list[str] = []
    parts: list[str] = []
    for start in range(0, len(data), step):
        connection.receive_data(data[start : start + step])
        for event in connection.events():
            assert isinstance(event, TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                texts.append("".join(parts))
                parts = []
    assert parts == [], "an unfinished message"
    return texts


def text_of(size: int) -> str:
    """A JSON string of exactly ``size`` UTF-8 bytes, with some two-byte characters."""
    if size < 2:
        return "x" * size
    wide = min(10, (size - 2) // 2)
    text = '"' + "é" * wide + "x" * (size - 2 - 2 * wide) + '"'
    assert len(text.encode()) == size
    return text


SIZES = [0, 1, 125, 126, 127, 300, 65535, 65536, MAX_FRAME_BYTES]


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_of_any_size_up_to_the_limit_decodes_as_one_text_message(size: int) -> None:
    text = text_of(size)
    data = encode_text(text)
    assert len(text.encode()) <= MAX_FRAME_BYTES
    assert data[0] == 0x81  # FIN + text, no RSV bit: no extension claimed
    assert data[1] & 0x80 == 0  # server frames are unmasked
    assert client_messages(data) == [text]


def test_length_encodings_switch_at_126_and_65536_bytes() -> None:
    assert len(encode_text("x" * 125)) == 2 + 125
    assert len(encode_text("x" * 126)) == 4 + 126
    assert len(encode_text("x" * 65535)) == 4 + 65535
    assert len(encode_text("x" * 65536)) == 10 + 65536


def test_multibyte_text_counts_bytes_not_characters() -> None:
    text = "é" * 100  # 100 characters, 200 bytes: needs the 2-byte length
    assert encode_text(text)[1] == 126
    assert client_messages(encode_text(text)) == [text]


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_frames_joined_in_one_write_decode_as_separate_messages(chunk: int | None) -> None:
    texts = [text_of(size) for size in (10, 125, 126, 5000, 65536, 2, 70000)]
    data = b"".join(TextFrame.of(text).data for text in texts)
    assert client_messages(data, chunk) == texts


def test_text_frame_is_the_same_bytes_for_every_recipient_and_sized_in_bytes() -> None:
    frame = TextFrame.of('{"a":"é"}')
    assert frame.data == encode_text(frame.text)
    assert len(frame) == len(frame.data)


# --- a real trio-websocket server --------------------------------------------------------


@asynccontextmanager
async def served(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[WebSocketConnection]]]:
    """A trio-websocket server whose handler hands each accepted connection to the test."""
    send, receive = trio.open_memory_channel[WebSocketConnection](1)
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await send.send(ws)
        await done.wait()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    try:
        yield server.port, receive
    finally:
        done.set()


@asynccontextmanager
async def connected(
    nursery: trio.Nursery, **client_options: Any
) -> AsyncIterator[tuple[WebSocketConnection, RawWriter, WebSocketConnection]]:
    """(server side, its raw writer, client side) of one trio-websocket connection."""
    async with (
        served(nursery) as (port, accepted),
        open_websocket_url(f"ws://127.0.0.1:{port}/ws", **client_options) as client,
    ):
        ws = await accepted.receive()
        raw = raw_writer(ws)
        assert isinstance(raw, RawWriter), "trio-websocket internals changed"
        yield ws, raw, client


async def test_raw_frames_reach_a_trio_websocket_client_between_library_pings(
    nursery: trio.Nursery,
) -> None:
    async with connected(nursery) as (ws, raw, client):
        texts = [text_of(size) for size in (20, 200, 70000)]
        await raw.send(b"".join(TextFrame.of(t).data for t in texts))
        await ws.send_message("after")  # the library's own frames still follow
        # (the client's reader queues one message: read before it can answer a ping)
        got = [await client.get_message() for _ in range(4)]
        with trio.fail_after(5):
            await ws.ping(b"p1")  # answered by the client: the stream is in sync
        await raw.send(TextFrame.of("last").data)
        got.append(await client.get_message())
        assert got == [*texts, "after", "last"]
        await ws.aclose(1001, "bye")
        with pytest.raises(ConnectionClosed):
            await client.get_message()
        assert client.closed is not None
        assert client.closed.code == 1001
        with pytest.raises(ConnectionClosed):  # never a data frame after the close
            await raw.send(TextFrame.of("too late").data)


async def test_a_raw_write_waits_for_the_library_send_lock(nursery: trio.Nursery) -> None:
    """The raw writer holds the very lock trio-websocket's pings and closes take."""
    async with connected(nursery) as (ws, raw, client):
        pinged = trio.Event()

        async def ping() -> None:
            await ws.ping(b"p")
            pinged.set()

        async with trio.open_nursery() as inner:
            async with raw.lock:  # a raw write in progress
                inner.start_soon(ping)
                await trio.testing.wait_all_tasks_blocked()
                assert ws._stream_lock.locked()
                assert not pinged.is_set()  # the ping waits for the write
            with trio.fail_after(5):
                await pinged.wait()
        await raw.send(TextFrame.of("x").data)
        assert await client.get_message() == "x"


async def raw_client_events(stream: trio.SocketStream, conn: WSConnection) -> list[Event]:
    data = await stream.receive_some()
    conn.receive_data(data)
    return list(conn.events())


async def test_a_client_offering_permessage_deflate_gets_plain_frames(
    nursery: trio.Nursery,
) -> None:
    """Chromium offers permessage-deflate; the server must not accept it (raw frames are plain)."""
    async with served(nursery) as (port, accepted):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = WSConnection(ConnectionType.CLIENT)
        deflate = PerMessageDeflate()
        request = Request(host=f"127.0.0.1:{port}", target="/ws", extensions=[deflate])
        await stream.send_all(conn.send(request))
        events = await raw_client_events(stream, conn)
        assert isinstance(events[0], AcceptConnection)
        assert events[0].extensions == []
        assert not deflate.enabled()
        ws = await accepted.receive()
        raw = raw_writer(ws)
        assert raw is not None
        await raw.send(TextFrame.of("plain").data)
        got: list[Event] = []
        with trio.fail_after(5):
            while not got:
                got = await raw_client_events(stream, conn)
        assert isinstance(got[0], TextMessage)
        assert got[0].data == "plain"
        await stream.send_all(conn.send(CloseConnection(code=1000)))
        await stream.aclose()


def test_raw_writer_is_none_when_an_extension_is_active() -> None:
    """If a trio-websocket ever negotiates an extension, the client falls back."""

    class Fake:
        closed = None

        def __init__(self) -> None:
            self._wsproto = WSConnection(ConnectionType.SERVER)
            deflate = PerMessageDeflate()
            deflate._enabled = True
            self._wsproto.connection = Connection(ConnectionType.SERVER, [deflate])
            self._stream_lock = trio.StrictFIFOLock()
            self._stream = None

    assert raw_writer(Fake()) is None  # type: ignore[arg-type]
    plain = Fake()
    plain._wsproto.connection = Connection(ConnectionType.SERVER, [])
    assert raw_writer(plain) is not None  # type: ignore[arg-type]


# --- what the socket does not take at once ------------------------------------------------

# Far more than a loopback socket's send and receive buffers hold together (a few MiB).
BIG = [text_of(100_000) + f"{i:04d}" for i in range(200)]


async def test_a_write_the_socket_takes_only_in_part_is_finished_before_anything_else(
    nursery: trio.Nursery,
) -> None:
    """The rest of a partial write goes out under the lock: a ping waits, frames stay whole."""
    async with connected(nursery, max_message_size=2**20) as (ws, raw, client):
        assert raw.socket is not None, "a plain socket stream: the non-blocking path is on"
        data = b"".join(TextFrame.of(t).data for t in BIG)
        written = trio.Event()
        pinged = trio.Event()

        async def write() -> None:
            await raw.send(data, deadline_s=30)
            written.set()

        async def ping() -> None:
            await ws.ping(b"during")
            pinged.set()

        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert not written.is_set(), "the socket took everything: BIG is too small"
        assert ws._stream_lock.locked()  # held across the awaited rest
        nursery.start_soon(ping)
        await trio.testing.wait_all_tasks_blocked()
        assert not pinged.is_set()
        with trio.fail_after(30):
            got = [await client.get_message() for _ in BIG]
            await written.wait()
            await pinged.wait()  # the client answered the ping sent after the frames
        assert got == BIG


async def test_a_write_that_stays_unsent_past_the_deadline_raises_too_slow(
    nursery: trio.Nursery,
) -> None:
    async with connected(nursery, max_message_size=2**20) as (ws, raw, _):
        data = b"".join(TextFrame.of(t).data for t in BIG)
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError):  # the client reads nothing
            await raw.send(data, deadline_s=0.3)
        assert 0.3 <= trio.current_time() - started < 5
        assert not ws._stream_lock.locked()  # released for the close that follows


async def test_a_write_that_finds_the_lock_held_waits_for_it(nursery: trio.Nursery) -> None:
    async with connected(nursery) as (_, raw, client):
        sent = trio.Event()

        async def write() -> None:
            await raw.send(TextFrame.of("after the holder").data)
            sent.set()

        async with raw.lock:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            await raw.stream.send_all(TextFrame.of("holder").data)  # the holder's write
        with trio.fail_after(5):
            await sent.wait()
            assert [await client.get_message() for _ in range(2)] == ["holder", "after the holder"]


async def test_a_write_to_a_socket_whose_peer_is_gone_raises_connection_closed() -> None:
    """The non-blocking write's OSError (broken pipe, reset) means the connection closed.

    A bare socket pair under the writer: with a real trio-websocket, its reader task
    usually sees the peer go first and marks the connection closed, which hides this path.
    """
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    ws = SimpleNamespace(closed=None)
    protocol = SimpleNamespace(state=ConnectionState.OPEN)
    raw = RawWriter(ws, trio.StrictFIFOLock(), stream, protocol, ours)  # type: ignore[arg-type]
    await raw.send(TextFrame.of("first").data)
    assert client_messages(await theirs.recv(100)) == ["first"]
    theirs.close()
    with pytest.raises(ConnectionClosed):
        await raw.send(TextFrame.of("second").data)
    assert not raw.lock.locked()
    await stream.aclose()
