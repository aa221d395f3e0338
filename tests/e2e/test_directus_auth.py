"""The WebSocket handshake and subscribe authorization against a real Directus.

A Directus 11 user whose role's policy may read one event only, logged in the way the
SPA does (``mode: session``: the ``directus_session_token`` cookie), connects to the
processor's broadcast plug-in running in the real App. No stand-in anywhere: the
processor forwards the cookie to Directus, Directus answers from its own permissions.
The race rows were created through Directus' items API, so the processor's roster reads
tables that Directus made.
"""

from __future__ import annotations

import pytest
import redis
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from processor import config
from processor.broadcast.frames import iso
from tests.broadcast.live import recv, send, start_app, store_fix, ws_settings
from tests.e2e.directus import COOKIE, DirectusServer, Viewer
from tests.helpers import make_position, publish

pytestmark = pytest.mark.e2e


def session_cookie(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"theme=dark; {COOKIE}={token}".encode())]


async def test_session_cookie_hello_snapshot_live_and_forbidden(
    settings: config.Settings,
    directus_server: DirectusServer,
    viewer: Viewer,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    race = viewer.race
    s = ws_settings(settings, directus_server.url, postgres_url=directus_server.database_url)
    run = await start_app(nursery, s)
    a, b, _ = race.devices
    stored = make_position(a, 5, attributes={"239": 1})
    store_fix(directus_server.database_url, stored)

    async with open_websocket_url(
        run.url, extra_headers=session_cookie(viewer.session_token)
    ) as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello"
        assert hello["user_id"] == viewer.user_id

        await send(ws, type="subscribe", event_id=race.event_id, req="mine")
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot", snapshot
        assert snapshot["req"] == "mine"
        assert [(p["device_id"], p["entry_id"], p["ts"]) for p in snapshot["positions"]] == [
            (a, race.entries[a], iso(stored.ts))
        ]

        fresh = make_position(b, 10, attributes={"239": 1})
        publish(sync_redis, settings.telemetry_stream, [fresh])
        live = await recv(ws)
        assert (live["type"], live["event_id"], live["device_id"], live["ts"]) == (
            "position",
            race.event_id,
            b,
            iso(fresh.ts),
        )

        await send(ws, type="subscribe", event_id=race.other_event_id, req="theirs")
        assert await recv(ws) == {
            "type": "error",
            "code": "forbidden",
            "message": "no access to this event",
            "event_id": race.other_event_id,
            "req": "theirs",
        }
        await send(ws, type="subscribe", event_id="987654321", req="nobody's")
        assert (await recv(ws))["code"] == "forbidden"

    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(run.url, extra_headers=session_cookie("not-a-session")):
            pass
    assert rejected.value.status_code == 401
    await run.stop()


async def test_access_token_in_the_first_frame(
    settings: config.Settings,
    directus_server: DirectusServer,
    viewer: Viewer,
    nursery: trio.Nursery,
) -> None:
    """Non-browser clients: a Directus access token (``mode: json`` login) as first frame."""
    s = ws_settings(settings, directus_server.url, postgres_url=directus_server.database_url)
    run = await start_app(nursery, s)
    async with open_websocket_url(run.url) as ws:
        await send(ws, type="auth", access_token=viewer.access_token)
        assert (await recv(ws))["user_id"] == viewer.user_id
        await send(ws, type="subscribe", event_id=viewer.race.event_id)
        assert (await recv(ws))["type"] == "snapshot"
        await send(ws, type="subscribe", event_id=viewer.race.other_event_id)
        assert (await recv(ws))["code"] == "forbidden"
    await run.stop()
