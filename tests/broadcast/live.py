"""Helpers for the broadcast's end-to-end tests: the race rows, a running App, clients."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import attrs
import orjson
import psycopg
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from processor import config
from processor.app import App
from processor.broadcast.plugin import BroadcastPlugin, broadcast_plugin
from processor.core.model import Position
from processor.logs import make_logger
from processor.plugins import Context
from tests.broadcast.directus_stub import COOKIE
from tests.helpers import store_positions, wait_for

RACE_TABLES = Path(__file__).parents[2] / "schema" / "directus" / "race_tables.sql"


@attrs.frozen
class Race:
    event_id: str
    other_event_id: str  # exists, but the test user may not read it
    devices: list[str]
    entries: dict[str, int]  # imei -> entry id


def make_race(database_url: str, devices: int = 3) -> Race:
    """An event with ``devices`` entered trackers (unique IMEIs) and a second event."""
    prefix = uuid.uuid4().hex[:8]
    imeis = [f"B{prefix}{n:03d}" for n in range(devices)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(RACE_TABLES.read_text())
        event = conn.execute(
            "INSERT INTO events (name, status) VALUES (%s, 'live') RETURNING id", (prefix,)
        ).fetchone()
        other = conn.execute(
            "INSERT INTO events (name) VALUES (%s) RETURNING id", (prefix + "-x",)
        ).fetchone()
        assert event is not None
        assert other is not None
        entries = {}
        for number, imei in enumerate(imeis):
            device = conn.execute(
                "INSERT INTO devices (imei, model) VALUES (%s, 'FMB920') RETURNING id", (imei,)
            ).fetchone()
            assert device is not None
            entry = conn.execute(
                "INSERT INTO entries (event_id, device_id, number) VALUES (%s, %s, %s)"
                " RETURNING id",
                (event[0], device[0], str(number)),
            ).fetchone()
            assert entry is not None
            entries[imei] = int(entry[0])
    return Race(str(event[0]), str(other[0]), imeis, entries)


def store_fix(database_url: str, p: Position) -> None:
    """Put a fix straight into ``positions`` (as if written before this process started)."""
    store_positions(database_url, [p])


def ws_settings(settings: config.Settings, directus_url: str, **changes: Any) -> config.Settings:
    values: dict[str, Any] = dict(
        ws_host="127.0.0.1",
        ws_port=0,
        directus_url=directus_url,
        ws_ping_interval_s=60.0,
        ws_ping_timeout_s=30.0,
        ws_entries_refresh_s=0.2,
        shutdown_budget_s=5.0,
    )
    values.update(changes)
    return attrs.evolve(settings, **values)


@attrs.define
class Running:
    app: App
    plugin: BroadcastPlugin
    done: trio.Event

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.plugin.port}/ws"

    def metric(self, name: str, **labels: str) -> float:
        return self.app.metrics.registry.get_sample_value(name, labels) or 0.0

    async def stop(self) -> None:
        self.app.shutdown.begin("test")
        await wait_for(self.done.is_set, 15, what="app exit")


async def start_app(nursery: trio.Nursery, settings: config.Settings, **plugin: Any) -> Running:
    built: list[BroadcastPlugin] = []

    def factory(context: Context) -> BroadcastPlugin:
        built.append(broadcast_plugin(context, **plugin))
        return built[-1]

    app = App.create(settings, make_logger("warning"), plugin_factories=[factory])
    done = trio.Event()

    async def run() -> None:
        await app.run()
        done.set()

    nursery.start_soon(run)
    await wait_for(app.ready.is_set, 30, what="app ready")
    return Running(app, built[0], done)


def ws_url(app: App) -> str:
    """The ``/ws`` address of the app's broadcast plug-in (port 0 in tests: bound at start)."""
    (broadcast,) = [p for p in app.plugins if isinstance(p, BroadcastPlugin)]
    return f"ws://127.0.0.1:{broadcast.port}/ws"


def cookie(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"other=1; {COOKIE}={token}".encode())]


async def send(ws: WebSocketConnection, **message: Any) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def close_code(ws: WebSocketConnection) -> int:
    """The code the server closes ``ws`` with; fails if a frame comes first."""
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.reason is not None
    return closed.value.reason.code


async def recv(ws: WebSocketConnection, timeout: float = 10) -> dict[str, Any]:  # noqa: ASYNC109
    with trio.fail_after(timeout):
        frame: dict[str, Any] = orjson.loads(await ws.get_message())
    return frame
