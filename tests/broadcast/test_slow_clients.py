"""A client that stops reading: coalesced first, closed with 1013 when that is not enough.

The slow client's socket has a tiny receive buffer, so the server's writes back up in
TCP after a modest number of frames, like a phone on a bad link. Position frames of a
slow client coalesce to one per device, which is enough as long as an event has fewer
devices than the outbox holds; what cannot be coalesced (replies to its own pings) is
what makes it overflow here. A fast client on the same event is not delayed meanwhile.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from processor import config
from processor.broadcast.frames import iso
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import Race, Running, cookie, recv, send, start_app, ws_settings
from tests.helpers import count_rows, make_position, publish, wait_for

ROUND = 300  # fixes published per round while waiting for the server to react


@asynccontextmanager
async def slow_client(run: Running, event_id: str) -> AsyncIterator[WebSocketConnection]:
    """A subscribed client whose socket buffers almost nothing."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.connect(("127.0.0.1", run.plugin.port or 0))
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery, trio.SocketStream(sock), "127.0.0.1", "/ws", extra_headers=cookie("good")
        )
        await recv(ws)
        await send(ws, type="subscribe", event_id=event_id)
        await recv(ws)
        yield ws
        await ws.aclose()


async def flood_until(
    run: Running,
    sync_redis: redis.Redis,
    stream: str,
    devices: list[str],
    metric: str,
    pinger: WebSocketConnection | None = None,
) -> list[Any]:
    """Publish rounds of fixes over ``devices`` until ``metric`` moves; returns the fixes."""
    published = []
    second = 0
    with trio.fail_after(60):
        while run.metric(metric) == 0:
            batch = []
            for _ in range(ROUND):
                second += 1
                batch.append(make_position(devices[second % len(devices)], second / 10))
            publish(sync_redis, stream, batch)
            published.extend(batch)
            if pinger is not None:
                for n in range(20):
                    await send(pinger, type="ping", req=n)
            await trio.sleep(0.05)  # pacing of the producer, not a wait for a result
    return published


async def drain_until_closed(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], int]:
    frames = []
    with trio.fail_after(30):
        while True:
            try:
                frames.append(orjson.loads(await ws.get_message()))
            except ConnectionClosed as exc:
                return frames, exc.reason.code if exc.reason is not None else 0


async def test_slow_client_gets_coalesced_fixes_in_order_and_stays_connected(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url, ws_outbox_max=16))
    devices = race.devices
    async with slow_client(run, race.event_id) as ws:
        published = await flood_until(
            run,
            sync_redis,
            settings.telemetry_stream,
            devices,
            "processor_ws_frames_coalesced_total",
        )
        # The client has not read a frame yet: the write pipeline stored everything.
        prefix = devices[0][:-3]  # make_race: one prefix, then a 3-digit number
        await wait_for(
            lambda: count_rows(settings.postgres_url, prefix) == len(published),
            30,
            what="every published fix stored while the slow client is stuck",
        )
        # Coalescing replaces a device's unsent frame where it stands in the queue, so
        # devices may overtake each other; per device, fixes only move forward.
        markers = [make_position(d, len(published) + n) for n, d in enumerate(devices)]
        publish(sync_redis, settings.telemetry_stream, markers)
        wanted = {p.device_id: iso(p.ts) for p in markers}
        seen: dict[str, str] = {}
        received = 0
        with trio.fail_after(30):
            while seen != wanted:
                frame = await recv(ws)
                device = frame["device_id"]
                assert frame["ts"] > seen.get(device, ""), "a fix went backwards"
                seen[device] = frame["ts"]
                received += 1
        assert received < len(published)
        await send(ws, type="ping", req="alive")
        assert (await recv(ws))["type"] == "pong"
    assert run.metric("processor_ws_slow_clients_closed_total") == 0
    await run.stop()


async def test_client_that_cannot_keep_up_is_closed_1013_and_others_are_not_delayed(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url, ws_outbox_max=8))
    fast_seen: dict[str, str] = {}

    async def fast_reader(ws: WebSocketConnection) -> None:
        while True:
            frame = await recv(ws, timeout=60)
            fast_seen[frame["device_id"]] = frame["ts"]

    async with slow_client(run, race.event_id) as slow, trio.open_nursery() as readers:
        fast = await wrap_fast(nursery, run, race.event_id)
        readers.start_soon(fast_reader, fast)
        await flood_until(
            run,
            sync_redis,
            settings.telemetry_stream,
            race.devices,
            "processor_ws_slow_clients_closed_total",
            pinger=slow,
        )
        marker = make_position(race.devices[0], 10_000)
        publish(sync_redis, settings.telemetry_stream, [marker])
        await wait_for(
            lambda: fast_seen.get(race.devices[0]) == iso(marker.ts), 10, what="fast client"
        )
        readers.cancel_scope.cancel()
        _, code = await drain_until_closed(slow)
        assert code == 1013
    await run.stop()


async def wrap_fast(nursery: trio.Nursery, run: Running, event_id: str) -> WebSocketConnection:
    stream = await trio.open_tcp_stream("127.0.0.1", run.plugin.port or 0)
    ws = await wrap_client_stream(
        nursery, stream, "127.0.0.1", "/ws", extra_headers=cookie("good"), message_queue_size=64
    )
    await recv(ws)
    await send(ws, type="subscribe", event_id=event_id)
    await recv(ws)
    return ws
