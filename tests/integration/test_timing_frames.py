"""The race domain's crossings reach WebSocket clients as ``timing`` frames, and its
derived attributes ride in the ``position`` frames.

Runs the daemon's default plug-ins (domain, then broadcast) as ``processor run`` does.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from processor import config
from processor.broadcast.frames import iso
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import cookie, recv, send, ws_settings, ws_url
from tests.domain.course import at, fix
from tests.domain.model_store import position_of
from tests.domain.test_app import insert_race
from tests.helpers import publish, start_app, wait_for

Frame = dict[str, Any]


# Start (lon 14.0) at 5 s, checkpoints (14.03, 14.06) at 30 and 60 s, finish (14.1) at
# 95 s: interpolated between the fixes at 10 s (14.01) and 90 s (14.09).
FIXES = [fix(0, 13.99), fix(10, 14.01), fix(90, 14.09), fix(100, 14.11)]
CROSSINGS = [
    ("start", iso(at(5))),
    ("checkpoint", iso(at(30))),
    ("checkpoint", iso(at(60))),
    ("finish", iso(at(95))),
]


async def subscribed(ws: WebSocketConnection, event_id: object) -> None:
    assert (await recv(ws))["type"] == "hello"
    await send(ws, type="subscribe", event_id=str(event_id))
    assert (await recv(ws))["type"] == "snapshot"


async def until_finish(ws: WebSocketConnection) -> tuple[list[Frame], list[Frame]]:
    """(timing, position) frames received until the finish and every fix came in."""
    timing: list[Frame] = []
    positions: list[Frame] = []
    with trio.fail_after(20):
        while not timing or timing[-1]["kind"] != "finish" or len(positions) < len(FIXES):
            frame = await recv(ws)
            if frame["type"] == "timing":
                timing.append(frame)
            elif frame["type"] == "position":
                positions.append(frame)
    return timing, positions


async def test_start_and_finish_crossings_are_sent_as_timing_frames(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    directus = DirectusStub()
    await nursery.start(directus.run)
    race: dict[str, Any] = insert_race(settings.postgres_url)
    directus.grant("good", "u1", str(race["event"]))
    running = await start_app(nursery, ws_settings(settings, directus.url))
    app = running.app
    assert [p.name for p in app.plugins] == ["domain", "timing feed", "broadcast"]
    url = ws_url(app)
    async with open_websocket_url(url, extra_headers=cookie("good")) as ws:
        await subscribed(ws, race["event"])
        publish(
            sync_redis, settings.telemetry_stream, [position_of(race["imei"], f) for f in FIXES]
        )
        timing, positions = await until_finish(ws)
    assert [(t["kind"], t["crossed_at"]) for t in timing] == CROSSINGS
    # Position frames carry the derived, named attributes (the default FMB mapping: IO 239
    # ignition, IO 66 external voltage in mV), not the raw IO bag.
    assert [p["ts"] for p in positions] == [iso(f.ts) for f in FIXES]
    attributes = positions[0]["attrs"]
    assert attributes["ignition"] is True
    assert attributes["external_voltage_v"] == pytest.approx(12.85)
    assert not {"239", "66"} & attributes.keys()
    first = timing[0]
    assert first["event_id"] == str(race["event"])
    assert (first["stage_id"], first["entry_id"]) == (race["stage"], race["entry"])
    assert first["device_id"] == race["imei"]
    await running.stop()


async def test_every_instance_sends_the_crossings_another_instance_timed(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    """Timing frames reach the clients of an instance that timed nothing itself.

    Instance B is broadcast-only (``PIPELINE_ENABLED=false``), so every crossing is timed
    by instance A; B's client must still get each one, once. (Before the timing feed,
    crossings went to the timing instance's own hub only: B's client got none.)
    """
    directus = DirectusStub()
    await nursery.start(directus.run)
    race: dict[str, Any] = insert_race(settings.postgres_url)
    directus.grant("good", "u1", str(race["event"]))
    timer = await start_app(nursery, ws_settings(settings, directus.url))
    watcher = await start_app(
        nursery,
        ws_settings(
            settings,
            directus.url,
            pipeline_enabled=False,
            consumer_name="watcher",
        ),
    )
    # The domain keeps the definition for the IO mapping; no timing feed of its own.
    assert [p.name for p in watcher.app.plugins] == ["domain", "broadcast"]
    await wait_for(lambda: watcher.app.health.ready, 10, what="broadcast-only /readyz")

    async with (
        open_websocket_url(ws_url(timer.app), extra_headers=cookie("good")) as at_timer,
        open_websocket_url(ws_url(watcher.app), extra_headers=cookie("good")) as at_watcher,
    ):
        for ws in (at_timer, at_watcher):
            await subscribed(ws, race["event"])
        publish(
            sync_redis, settings.telemetry_stream, [position_of(race["imei"], f) for f in FIXES]
        )
        for ws in (at_timer, at_watcher):
            timing, _ = await until_finish(ws)
            assert [(t["kind"], t["crossed_at"]) for t in timing] == CROSSINGS
        # Nothing more follows: each crossing was sent once to each client.
        for ws in (at_timer, at_watcher):
            with trio.move_on_after(0.5):
                extra = await recv(ws)
                assert extra["type"] != "timing", extra
    # The broadcast-only instance never joined the group: it read and wrote nothing.
    consumers = sync_redis.xinfo_consumers(settings.telemetry_stream, settings.consumer_group)
    assert [c["name"] for c in consumers] == [settings.consumer_name.encode()]
    assert await watcher.stop() == 0
    assert await timer.stop() == 0
