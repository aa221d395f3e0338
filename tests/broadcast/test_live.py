"""The live feed end to end: real App, real Redis and PostgreSQL, real WebSocket clients."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import psycopg
import pytest
import redis
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from processor import config
from processor.broadcast.frames import iso
from tests import helpers
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import (
    Race,
    close_code,
    cookie,
    recv,
    send,
    start_app,
    store_fix,
    ws_settings,
    ws_url,
)
from tests.helpers import make_position, publish, wait_for


def fix(device: str, second: float, **changes: Any) -> Any:
    return make_position(device, second, attributes={"239": 1}, **changes)


async def test_hello_snapshot_then_only_new_valid_fixes_in_order(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url))
    a, b, c = race.devices
    store_fix(settings.postgres_url, fix(a, 5))
    store_fix(
        settings.postgres_url, fix(a, 6, latitude=0.0, longitude=0.0, satellites=0, fix_valid=False)
    )
    stream = settings.telemetry_stream

    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello"
        assert hello["user_id"] == "u1"
        assert hello["server_time"].endswith("Z")

        await send(ws, type="subscribe", event_id=race.event_id, req="r1")
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["req"] == "r1"
        assert snapshot["event_id"] == race.event_id
        assert [(p["device_id"], p["ts"]) for p in snapshot["positions"]] == [
            (a, iso(fix(a, 5).ts))
        ]

        no_fix = fix(c, 11, latitude=0.0, longitude=0.0, satellites=0)
        publish(sync_redis, stream, [fix(b, 10), fix(b, 9), no_fix, fix(a, 4), fix(b, 12)])
        first, second = await recv(ws), await recv(ws)
        assert first == {
            "type": "position",
            "event_id": race.event_id,
            "device_id": b,
            "entry_id": race.entries[b],
            "ts": iso(fix(b, 10).ts),
            "lat": fix(b, 10).latitude,
            "lon": fix(b, 10).longitude,
            "speed": 87.0,
            "heading": 270.0,
            "alt": 110.0,
            "sats": 12,
            "attrs": {},
        }
        # b@9 is late, c has no GPS fix, a@4 is older than a's snapshot fix: none is sent.
        assert (second["device_id"], second["ts"]) == (b, iso(fix(b, 12).ts))

        await send(ws, type="ping", req=7)
        assert await recv(ws) == {"type": "pong", "req": 7}

        await send(ws, type="unsubscribe", event_id=race.event_id)
        assert await recv(ws) == {"type": "unsubscribed", "event_id": race.event_id}
        async with open_websocket_url(run.url, extra_headers=cookie("good")) as witness:
            await recv(witness)
            await send(witness, type="subscribe", event_id=race.event_id)
            await recv(witness)
            publish(sync_redis, stream, [fix(b, 13)])
            assert (await recv(witness))["ts"] == iso(fix(b, 13).ts)
        await send(ws, type="ping", req="after")
        assert await recv(ws) == {"type": "pong", "req": "after"}  # nothing for b@13

    assert run.metric("processor_ws_frames_sent_total") >= 7
    assert (
        1 <= run.metric("processor_ws_writes_total") <= run.metric("processor_ws_frames_sent_total")
    )
    assert run.metric("processor_ws_fanout_seconds_count") >= 3
    await run.stop()


async def test_handshake_refusals(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    directus.grant("api", "robot")
    run = await start_app(nursery, ws_settings(settings, directus.url), auth_frame_timeout_s=0.3)
    base = run.url.rsplit("/", 1)[0]

    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(run.url, extra_headers=cookie("stolen")):
            pass
    assert rejected.value.status_code == 401

    evil = [*cookie("good"), (b"origin", b"https://evil.example")]
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(run.url, extra_headers=evil):
            pass
    assert rejected.value.status_code == 403

    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(base + "/other", extra_headers=cookie("good")):
            pass
    assert rejected.value.status_code == 404

    same_host = [*cookie("good"), (b"origin", f"http://127.0.0.1:{run.plugin.port}".encode())]
    async with open_websocket_url(run.url, extra_headers=same_host) as ws:
        assert (await recv(ws))["user_id"] == "u1"

    # No cookie: the first frame must authenticate, within the (shortened) window.
    async with open_websocket_url(run.url) as ws:
        assert await close_code(ws) == 4401
    async with open_websocket_url(run.url) as ws:
        await send(ws, type="auth", access_token="forged")
        assert await close_code(ws) == 4401
    async with open_websocket_url(run.url) as ws:
        await send(ws, type="auth", access_token="api")
        assert (await recv(ws))["user_id"] == "robot"

        await ws.send_message("x" * (64 * 1024 + 1))
        assert await close_code(ws) == 1009

    failures = "processor_ws_auth_failures_total"
    assert run.metric(failures, reason="invalid_credentials") == 2
    assert run.metric(failures, reason="origin") == 1
    assert run.metric(failures, reason="no_credentials") == 1
    await run.stop()


async def test_directus_down_closes_with_1013_and_answers_are_cached(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url))
    directus.status_override = 503
    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        assert await close_code(ws) == 1013  # never a hello

    directus.status_override = None
    for _ in range(3):
        async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
            assert (await recv(ws))["type"] == "hello"
    assert directus.calls.count("/users/me") == 2  # the 503, then one cached answer

    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        await recv(ws)
        directus.status_override = 503  # cached: the connect works, the event check fails
        await send(ws, type="subscribe", event_id=race.event_id)
        assert await close_code(ws) == 1013
    await run.stop()


async def test_subscription_errors(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url, ws_max_subscriptions=1))
    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        await recv(ws)
        await send(ws, type="subscribe", event_id=race.other_event_id, req="x")
        assert await recv(ws) == {
            "type": "error",
            "code": "forbidden",
            "message": "no access to this event",
            "event_id": race.other_event_id,
            "req": "x",
        }
        await ws.send_message("{not json")
        assert (await recv(ws))["code"] == "bad_request"
        await send(ws, type="dance", req=1)
        assert (await recv(ws))["code"] == "bad_request"
        await send(ws, type="subscribe", event_id="../../users", req=2)
        assert (await recv(ws))["code"] == "bad_request"

        await send(ws, type="subscribe", event_id=int(race.event_id))
        assert (await recv(ws))["type"] == "snapshot"
        await send(ws, type="subscribe", event_id="999999", req=3)
        answer = await recv(ws)
        assert (answer["code"], answer["req"]) == ("too_many_subscriptions", 3)
        assert run.metric("processor_ws_subscriptions") == 1
        assert run.metric("processor_ws_clients") == 1
    await run.stop()
    assert run.metric("processor_ws_subscriptions") == 0
    assert run.metric("processor_ws_clients") == 0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_directus_unreachable_or_down_is_1013_for_cookie_and_first_frame(
    settings: config.Settings, directus: DirectusStub, race: Race, nursery: trio.Nursery
) -> None:
    unreachable = await start_app(
        nursery, ws_settings(settings, f"http://127.0.0.1:{closed_port()}")
    )
    async with open_websocket_url(unreachable.url, extra_headers=cookie("good")) as ws:
        assert await close_code(ws) == 1013
    async with open_websocket_url(unreachable.url) as ws:
        await send(ws, type="auth", access_token="good")
        assert await close_code(ws) == 1013
    failures = "processor_ws_auth_failures_total"
    assert unreachable.metric(failures, reason="directus_unavailable") == 2
    await unreachable.stop()

    run = await start_app(nursery, ws_settings(settings, directus.url))
    directus.status_override = 503
    async with open_websocket_url(run.url) as ws:
        await send(ws, type="auth", access_token="good")
        assert await close_code(ws) == 1013  # never a hello
    directus.status_override = None
    async with open_websocket_url(run.url) as ws:  # the failure was not cached
        await send(ws, type="auth", access_token="good")
        assert (await recv(ws))["user_id"] == "u1"
    await run.stop()


async def test_entries_changed_in_the_database_are_picked_up_without_a_restart(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    run = await start_app(nursery, ws_settings(settings, directus.url))
    assert run.plugin.hub is not None
    roster = run.plugin.hub.roster
    a, b, _ = race.devices
    newcomer = f"N{uuid.uuid4().hex[:12]}"
    stream = settings.telemetry_stream

    async with open_websocket_url(run.url, extra_headers=cookie("good")) as ws:
        await recv(ws)
        await send(ws, type="subscribe", event_id=race.event_id)
        assert (await recv(ws))["positions"] == []

        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            device = conn.execute(
                "INSERT INTO devices (imei) VALUES (%s) RETURNING id", (newcomer,)
            ).fetchone()
            assert device is not None
            entry = conn.execute(
                "INSERT INTO entries (event_id, device_id) VALUES (%s, %s) RETURNING id",
                (int(race.event_id), device[0]),
            ).fetchone()
            assert entry is not None
            conn.execute("DELETE FROM entries WHERE id = %s", (race.entries[a],))
        await wait_for(
            lambda: newcomer in roster.current.by_device and a not in roster.current.by_device,
            10,
            what="the roster refresh",
        )
        publish(sync_redis, stream, [fix(a, 20), fix(newcomer, 21), fix(b, 22)])
        got = [await recv(ws), await recv(ws)]
        assert [(f["device_id"], f["entry_id"]) for f in got] == [
            (newcomer, int(entry[0])),
            (b, race.entries[b]),
        ]  # a is no longer entered: its fix is not the event's any more
    await run.stop()


async def test_positions_carry_the_io_mapping_s_named_attributes(
    settings: config.Settings,
    directus: DirectusStub,
    race: Race,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    """With the daemon's default plug-ins, ``attrs`` is the domain's IO mapping of the
    raw IO bag (here a Directus ``io_mappings`` table of a model of its own)."""
    model = f"M{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET model = %s WHERE imei = ANY(%s)", (model, race.devices))
        for io_id, name, scale, kind in (
            (239, "contact", 1, "bool"),
            (66, "volts", 0.001, "number"),
        ):
            conn.execute(
                "INSERT INTO io_mappings (model, io_id, name, scale, kind)"
                " VALUES (%s, %s, %s, %s, %s)",
                (model, io_id, name, scale, kind),
            )
    running = await helpers.start_app(nursery, ws_settings(settings, directus.url))
    assert [p.name for p in running.app.plugins] == ["domain", "timing feed", "broadcast"]
    url = ws_url(running.app)
    a, b, _ = race.devices
    store_fix(settings.postgres_url, make_position(a, 5, attributes={"239": 1, "66": 12000}))

    async with open_websocket_url(url, extra_headers=cookie("good")) as ws:
        await recv(ws)
        await send(ws, type="subscribe", event_id=race.event_id)
        (stored,) = (await recv(ws))["positions"]
        assert stored["attrs"] == {"contact": True, "volts": 12.0}
        publish(sync_redis, settings.telemetry_stream, [make_position(b, 6, attributes={"239": 0})])
        live = await recv(ws)
        assert (live["device_id"], live["attrs"]) == (b, {"contact": False})
    running.app.shutdown.begin("test")
    await wait_for(running.done.is_set, 15, what="app exit")
