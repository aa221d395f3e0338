"""Snapshot/live joining under load, shutdown, several instances."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import redis
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from processor import config
from processor.broadcast.frames import iso
from processor.broadcast.race_store import RaceStore
from processor.core.model import Position
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import Race, cookie, recv, send, start_app, store_fix, ws_settings
from tests.helpers import make_position, publish, wait_for


@attrs.define
class GatedStore(RaceStore):
    """Holds the snapshot's PostgreSQL query until the test opens the gate."""

    entered: trio.Event = attrs.field(factory=trio.Event)
    gate: trio.Event = attrs.field(factory=trio.Event)

    async def newest_valid(self, device_ids: Sequence[str]) -> list[Position]:
        self.entered.set()
        await self.gate.wait()
        return await super().newest_valid(device_ids)


async def test_fixes_arriving_during_the_snapshot_query_are_neither_lost_nor_repeated(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    store = GatedStore(settings.postgres_url)
    run = await start_app(nursery, ws_settings(settings, directus.url), store=store)
    assert run.plugin.hub is not None
    last = run.plugin.hub.last
    a, b, c = race.devices
    store_fix(settings.postgres_url, make_position(a, 5))
    store_fix(settings.postgres_url, make_position(c, 1))
    stream = settings.telemetry_stream

    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        await recv(ws)
        await send(ws, type="subscribe", event_id=race.event_id)
        await wait_for(store.entered.is_set, 10, what="snapshot query started")
        # While the query runs: a and b move; a late fix of a comes in after a@10.
        publish(sync_redis, stream, [make_position(a, 10), make_position(b, 11)])
        publish(sync_redis, stream, [make_position(a, 3)])
        await wait_for(lambda: b in last and a in last, 10, what="fixes broadcast")
        assert last[a].ts == make_position(a, 10).ts
        store.gate.set()

        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        assert sorted((p["device_id"], p["ts"]) for p in snapshot["positions"]) == [
            (a, iso(make_position(a, 10).ts)),
            (b, iso(make_position(b, 11).ts)),
            (c, iso(make_position(c, 1).ts)),  # from PostgreSQL
        ]
        publish(sync_redis, stream, [make_position(a, 6), make_position(a, 12)])
        publish(sync_redis, stream, [make_position(b, 13)])
        got = [await recv(ws), await recv(ws)]
        assert [(f["type"], f["device_id"], f["ts"]) for f in got] == [
            ("position", a, iso(make_position(a, 12).ts)),
            ("position", b, iso(make_position(b, 13).ts)),
        ]
        await send(ws, type="ping", req=1)
        assert (await recv(ws))["type"] == "pong"
    await run.stop()


async def test_shutdown_closes_every_client_with_1001_and_stops_accepting(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    budget = 5.0
    run = await start_app(nursery, ws_settings(settings, directus.url, shutdown_budget_s=budget))
    codes: list[int] = []
    closed_at: list[float] = []

    async def client(ready: trio.Event) -> None:
        async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
            await recv(ws)
            await send(ws, type="subscribe", event_id=race.event_id)
            await recv(ws)
            ready.set()
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws, timeout=10)
            codes.append(closed.value.reason.code)
            closed_at.append(trio.current_time())

    async with trio.open_nursery() as clients:
        for _ in range(3):
            ready = trio.Event()
            clients.start_soon(client, ready)
            await ready.wait()
        began = trio.current_time()
        run.app.shutdown.begin("test")  # the clients' recv deadline bounds the wait
    assert codes == [1001, 1001, 1001]
    assert max(closed_at) - began < budget
    await wait_for(run.done.is_set, 15, what="app exit")
    with pytest.raises((HandshakeError, OSError)):
        async with open_websocket_url(run.url, extra_headers=cookie("good"), connect_timeout=2):
            pass


async def test_every_instance_serves_its_clients_the_whole_feed(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    runs = [
        await start_app(
            nursery, ws_settings(settings, directus.url, consumer_name=f"{name}-{id(race)}")
        )
        for name in ("one", "two")
    ]
    assert runs[0].plugin.port != runs[1].plugin.port
    a, b, _ = race.devices
    fixes = [make_position(d, s) for s in range(1, 21) for d in (a, b)]
    expected = [(p.device_id, iso(p.ts)) for p in fixes]
    received: dict[int, list[tuple[str, str]]] = {0: [], 1: []}

    async def watch(index: int, subscribed: trio.Event) -> None:
        async with open_websocket_url(runs[index].url, extra_headers=cookie("good")) as ws:
            await recv(ws)
            await send(ws, type="subscribe", event_id=race.event_id)
            assert (await recv(ws))["positions"] == []
            subscribed.set()
            while len(received[index]) < len(expected):
                frame = await recv(ws)
                received[index].append((frame["device_id"], frame["ts"]))

    async with trio.open_nursery() as watchers:
        for index in (0, 1):
            subscribed = trio.Event()
            watchers.start_soon(watch, index, subscribed)
            await subscribed.wait()
        publish(sync_redis, settings.telemetry_stream, fixes)
    assert received[0] == expected
    assert received[1] == expected
    # Plain XREAD: the broadcast leaves no consumer group of its own in Redis.
    groups = sync_redis.xinfo_groups(settings.telemetry_stream)
    assert [g["name"] for g in groups] == [settings.consumer_group.encode()]
    for run in runs:
        await run.stop()
