"""Liveness: the server pings every client and closes one that stops answering.

trio-websocket's client answers pings by itself, so these tests speak WebSocket with
bare wsproto over a TCP stream: the test decides whether a ping gets its pong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)

from processor import config
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import Race, cookie, start_app, ws_settings
from tests.helpers import wait_for

E = TypeVar("E", bound=Event)
PING_INTERVAL_S = 0.2
PING_TIMEOUT_S = 0.6


@attrs.define
class RawClient:
    stream: trio.SocketStream
    conn: WSConnection
    pending: deque[Event] = attrs.field(factory=deque)
    eof: bool = False

    async def event(self, timeout: float = 10) -> Event:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while not self.pending:
                if self.eof:
                    raise EOFError("the server closed the TCP connection")
                data = await self.stream.receive_some(65536)
                self.eof = not data
                self.conn.receive_data(data or None)
                self.pending.extend(self.conn.events())
        return self.pending.popleft()

    async def expect(self, kind: type[E], timeout: float = 10) -> E:  # noqa: ASYNC109
        event = await self.event(timeout)
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def json(self, timeout: float = 10) -> dict[str, Any]:  # noqa: ASYNC109
        frame: dict[str, Any] = orjson.loads((await self.expect(TextMessage, timeout)).data)
        return frame


@asynccontextmanager
async def raw_client(port: int, token: str) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = RawClient(stream, WSConnection(ConnectionType.CLIENT))
    try:
        await client.send(
            Request(host=f"127.0.0.1:{port}", target="/ws", extra_headers=cookie(token))
        )
        await client.expect(AcceptConnection)
        yield client
    finally:
        await stream.aclose()


async def test_pinged_clients_that_answer_stay_and_a_silent_one_is_closed(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    s = ws_settings(
        settings, directus.url, ws_ping_interval_s=PING_INTERVAL_S, ws_ping_timeout_s=PING_TIMEOUT_S
    )
    run = await start_app(nursery, s)
    async with raw_client(run.plugin.port or 0, "good") as client:
        assert (await client.json())["type"] == "hello"
        # Answered pings, several intervals in a row: the connection stays.
        for _ in range(4):
            ping = await client.expect(Ping, timeout=5)
            await client.send(ping.response())
        await client.send(Message(data=orjson.dumps({"type": "ping", "req": "alive"}).decode()))
        while True:  # a heartbeat ping may come before the answer
            event = await client.event()
            if isinstance(event, Ping):
                await client.send(event.response())
                continue
            assert isinstance(event, TextMessage), event
            assert orjson.loads(event.data) == {"type": "pong", "req": "alive"}
            break
        assert run.metric("processor_ws_clients") == 1

        # Then silence: the next ping goes unanswered and the server gives up on us.
        await client.expect(Ping, timeout=5)
        unanswered = trio.current_time()
        close = await client.expect(CloseConnection, timeout=5)
        waited = trio.current_time() - unanswered
        assert close.code == 1011
        assert waited > PING_TIMEOUT_S / 2, "closed before the ping timeout"
    await wait_for(lambda: run.metric("processor_ws_clients") == 0, 10, what="client gone")
    await run.stop()
