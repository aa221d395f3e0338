"""The domain plug-in inside the real App: PostgreSQL, Redis, late data, a restart."""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

import orjson
import psycopg
import pytest
import redis
import trio

from processor import config
from processor.app import App
from processor.domain.plugin import domain_plugin
from processor.logs import make_logger
from tests.domain.course import at, box, fix, line
from tests.domain.model_store import position_of
from tests.helpers import wait_for

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "schema" / "directus" / "race_tables.sql"


def insert_race(url: str) -> dict[str, Any]:
    """A live event with one stage (start, 2 checkpoints, finish, a zone) and one entry."""
    imei = f"D{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
        event = _id(conn, "INSERT INTO events (name, status) VALUES ('T', 'live') RETURNING id")
        device = _id(
            conn, "INSERT INTO devices (imei, model) VALUES (%s, 'FMB920') RETURNING id", imei
        )
        entry = _id(
            conn,
            "INSERT INTO entries (event_id, device_id, number) VALUES (%s, %s, '7') RETURNING id",
            event,
            device,
        )
        stage = _id(
            conn, "INSERT INTO stages (event_id, name) VALUES (%s, 'SS1') RETURNING id", event
        )
        fences = {}
        for kind, seq, geometry in (
            ("start", 0, line(14.0)),
            ("checkpoint", 1, line(14.03)),
            ("checkpoint", 2, line(14.06)),
            ("finish", 9, line(14.1)),
            ("zone", 0, box(14.07, 14.08)),
        ):
            fences[(kind, seq)] = _id(
                conn,
                "INSERT INTO geofences (event_id, stage_id, kind, sequence, geometry)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                event, stage, kind, seq, orjson.dumps(geometry).decode(),
            )  # fmt: skip
    return {"imei": imei, "event": event, "entry": entry, "stage": stage, "fences": fences}


def _id(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def start_app(nursery: trio.Nursery, settings: config.Settings) -> tuple[App, trio.Event]:
    app = App.create(settings, make_logger("warning"), plugin_factories=[domain_plugin])
    done = trio.Event()

    async def run() -> None:
        await app.run()
        done.set()

    nursery.start_soon(run)
    await wait_for(app.ready.is_set, 30, what="ready")
    return app, done


# Lons every 10 s: start at 5 s, checkpoints at 25 and 46.667 s, zone 60-80 s, finish at 95 s.
LONS = (13.99, 14.01, 14.02, 14.04, 14.05, 14.065, 14.072, 14.078, 14.09, 14.095, 14.105)


async def test_timing_end_to_end_with_late_fix_and_restarts(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery, race: dict[str, Any]
) -> None:
    url, imei = settings.postgres_url, race["imei"]
    # Top speed in the zone (fixes at 60 and 70 s) is the one before the second restart.
    fixes = [fix(i * 10, lon, speed=55.0 if i == 6 else 40.0 + i) for i, lon in enumerate(LONS)]

    def publish(fs: list[Any]) -> None:
        _publish(sync_redis, settings.telemetry_stream, imei, fs)

    app, done = await start_app(nursery, settings)
    # In order up to the first checkpoint, but the fix at 10 s comes late.
    publish([fixes[0], fixes[2], fixes[3]])
    await wait_for(lambda: _records(url, race) != {}, what="start record")
    publish([fixes[1]])
    expected_start = at(5)
    await wait_for(
        lambda: _records(url, race).get("start-0") == expected_start, what="late fix moves start"
    )

    # Restart mid-stage, between the two fixes of a checkpoint crossing (14.05 at 40 s,
    # 14.065 at 50 s): the new instance rehydrates the last fix and the open stage clock.
    publish([fixes[4]])
    await wait_for(lambda: _stored(url, imei) == 5, what="fix at 40 s stored")
    app, done = await _restart(nursery, settings, app, done)
    publish(fixes[5:7])
    await wait_for(
        lambda: _records(url, race).get("checkpoint-2") == at(46.667), what="checkpoint 2"
    )
    await wait_for(lambda: _visits(url, race) == [(at(60), None)], what="zone entered")
    # And again inside the speed zone: membership and the top speed so far survive it.
    app, done = await _restart(nursery, settings, app, done)
    publish(fixes[7:])
    await wait_for(
        lambda: (
            rows(url, "SELECT status FROM stage_results WHERE entry_id = %s", race["entry"])
            == [("finished",)]
        ),
        what="finished",
    )
    assert _records(url, race) == {
        "start-0": at(5), "checkpoint-1": at(25), "checkpoint-2": at(46.667), "finish-9": at(95),
    }  # fmt: skip
    [(elapsed, passed, total, rank)] = rows(
        url,
        "SELECT elapsed_ms, checkpoints_passed, checkpoints_total, rank FROM stage_results"
        " WHERE entry_id = %s",
        race["entry"],
    )
    assert (elapsed, passed, total, rank) == (90_000, 2, 2, 1)
    [(entered, exited, top)] = rows(
        url,
        "SELECT entered_at, exited_at, max_speed_kmh FROM zone_events WHERE entry_id = %s",
        race["entry"],
    )
    assert (entered, exited, top) == (at(60), at(80), 55.0)
    [(derived,)] = rows(url, "SELECT derived FROM positions WHERE device_id = %s LIMIT 1", imei)
    assert derived["ignition"] is True
    assert derived["external_voltage_v"] == pytest.approx(12.85)
    app.shutdown.begin("test")
    await wait_for(done.is_set, 15, what="exit")


async def _restart(
    nursery: trio.Nursery, settings: config.Settings, app: App, done: trio.Event
) -> tuple[App, trio.Event]:
    """Stop the instance (all hot state lost) and start a new one on the same data."""
    app.shutdown.begin("test")
    await wait_for(done.is_set, 15, what="exit")
    return await start_app(nursery, settings)


def _stored(url: str, imei: str) -> int:
    [(count,)] = rows(url, "SELECT count(*) FROM positions WHERE device_id = %s", imei)
    return int(count)


def _visits(url: str, race: dict[str, Any]) -> list[tuple[Any, ...]]:
    return rows(
        url, "SELECT entered_at, exited_at FROM zone_events WHERE entry_id = %s", race["entry"]
    )


def _publish(client: redis.Redis, stream: str, imei: str, fixes: list[Any]) -> None:
    from tests.helpers import publish

    publish(client, stream, [position_of(imei, f) for f in fixes])


def _records(url: str, race: dict[str, Any]) -> dict[str, Any]:
    names = {v: f"{k[0]}-{k[1]}" for k, v in race["fences"].items()}
    found = rows(
        url, "SELECT geofence_id, crossed_at FROM timing_records WHERE entry_id = %s", race["entry"]
    )
    return {names[g]: t for g, t in found}
