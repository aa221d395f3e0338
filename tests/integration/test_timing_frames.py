"""The race domain's crossings reach WebSocket clients as ``timing`` frames, and its
derived attributes ride in the ``position`` frames.

Runs the daemon's default plug-ins (domain, then broadcast) as ``processor run`` does.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis
import trio
from trio_websocket import open_websocket_url

from processor import config
from processor.broadcast.frames import iso
from processor.broadcast.plugin import BroadcastPlugin
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import cookie, recv, send, ws_settings
from tests.domain.course import at, fix
from tests.domain.model_store import position_of
from tests.domain.test_app import insert_race
from tests.helpers import publish, start_app


async def test_start_and_finish_crossings_are_sent_as_timing_frames(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    directus = DirectusStub()
    await nursery.start(directus.run)
    race: dict[str, Any] = insert_race(settings.postgres_url)
    directus.grant("good", "u1", str(race["event"]))
    running = await start_app(nursery, ws_settings(settings, directus.url))
    app = running.app
    assert [p.name for p in app.plugins] == ["domain", "broadcast"]
    broadcast = cast(BroadcastPlugin, app.plugins[1])

    url = f"ws://127.0.0.1:{broadcast.port}/ws"
    async with open_websocket_url(url, extra_headers=cookie("good")) as ws:
        assert (await recv(ws))["type"] == "hello"
        await send(ws, type="subscribe", event_id=str(race["event"]))
        assert (await recv(ws))["type"] == "snapshot"
        # Start (lon 14.0) at 5 s, checkpoints (14.03, 14.06) at 30 and 60 s, finish (14.1)
        # at 95 s: interpolated between the fixes at 10 s (14.01) and 90 s (14.09).
        fixes = [fix(0, 13.99), fix(10, 14.01), fix(90, 14.09), fix(100, 14.11)]
        publish(
            sync_redis, settings.telemetry_stream, [position_of(race["imei"], f) for f in fixes]
        )
        timing: list[dict[str, Any]] = []
        positions: list[dict[str, Any]] = []
        with trio.fail_after(20):
            while not timing or timing[-1]["kind"] != "finish" or len(positions) < len(fixes):
                frame = await recv(ws)
                if frame["type"] == "timing":
                    timing.append(frame)
                elif frame["type"] == "position":
                    positions.append(frame)
    assert [(t["kind"], t["crossed_at"]) for t in timing] == [
        ("start", iso(at(5))),
        ("checkpoint", iso(at(30))),
        ("checkpoint", iso(at(60))),
        ("finish", iso(at(95))),
    ]
    # Position frames carry the derived, named attributes (the default FMB mapping: IO 239
    # ignition, IO 66 external voltage in mV), not the raw IO bag.
    assert [p["ts"] for p in positions] == [iso(f.ts) for f in fixes]
    attributes = positions[0]["attrs"]
    assert attributes["ignition"] is True
    assert attributes["external_voltage_v"] == pytest.approx(12.85)
    assert not {"239", "66"} & attributes.keys()
    first = timing[0]
    assert first["event_id"] == str(race["event"])
    assert (first["stage_id"], first["entry_id"]) == (race["stage"], race["entry"])
    assert first["device_id"] == race["imei"]
    await running.stop()
