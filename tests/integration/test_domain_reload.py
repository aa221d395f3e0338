"""``processor domain reload`` reaches a running instance and reloads its race definition;
a change in Directus then takes effect without a restart, and a bad row is skipped."""

from __future__ import annotations

from typing import Any, cast

import attrs
import orjson
import psycopg
import redis
import trio

from processor import config
from processor.domain.plugin import DomainPlugin
from tests.domain.course import at, fix, line
from tests.domain.model_store import position_of
from tests.domain.test_app import insert_race, rows
from tests.helpers import publish, start_app, wait_for
from tests.integration.test_operator_cli import cli


async def test_reload_request_reloads_the_definition_now(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    running = await start_app(nursery, settings)
    app = running.app
    [domain] = [cast(DomainPlugin, p) for p in app.plugins if p.name == "domain"]

    def loads() -> float:
        return sum(
            app.metrics.registry.get_sample_value(
                "processor_domain_definition_loads_total", {"outcome": o}
            )
            or 0.0
            for o in ("missing", "failed", "unchanged", "changed")
        )

    def rejected() -> float:
        value = app.metrics.registry.get_sample_value(
            "processor_domain_rejected_rows_total", {"table": "geofences"}
        )
        return value or 0.0

    async def reload() -> None:
        before = loads()
        result = await trio.to_thread.run_sync(cli, settings, "domain", "reload", "--json")
        assert result.json()["receivers"] == 1
        await wait_for(lambda: loads() == before + 1, 10, what="a reload")

    assert loads() >= 1  # the load at start (DOMAIN_REFRESH_S is 30 s: no timed reload yet)
    await reload()

    # Organisers edit the race while the daemon runs: a new event, then the finish line
    # moved from lon 14.1 to 14.05 and a geofence row with a geometry that cannot be used.
    url = settings.postgres_url
    race: dict[str, Any] = insert_race(url)
    try:
        await reload()
        assert race["event"] in domain.definitions.current.events
        finish = race["fences"][("finish", 9)]
        skipped_before = rejected()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE geofences SET geometry = %s WHERE id = %s",
                (orjson.dumps(line(14.05)).decode(), finish),
            )
            [(bad,)] = conn.execute(
                "INSERT INTO geofences (event_id, stage_id, kind, sequence, geometry)"
                " VALUES (%s, %s, 'checkpoint', 5, %s) RETURNING id",
                (race["event"], race["stage"], '{"type": "Point", "coordinates": [14, 45]}'),
            ).fetchall()
        await reload()
        assert rejected() == skipped_before + 1
        fences = domain.definitions.current.events[race["event"]].index
        assert fences.get(bad) is None
        moved = fences.get(finish)
        assert moved is not None
        assert moved.bounds[0] == 14.05
        assert not running.done.is_set()  # the bad row did not take the tree down

        # The moved line is what timing uses now: 14.04 at 20 s -> 14.06 at 30 s.
        fixes = [fix(0, 13.99), fix(10, 14.01), fix(20, 14.04), fix(30, 14.06)]
        publish(
            sync_redis, settings.telemetry_stream, [position_of(race["imei"], f) for f in fixes]
        )

        def finished() -> list[tuple[Any, ...]]:
            return rows(
                url,
                "SELECT crossed_at FROM timing_records WHERE entry_id = %s AND geofence_id = %s",
                race["entry"],
                finish,
            )

        await wait_for(lambda: finished() != [], 20, what="finish crossing")
        assert finished() == [(at(25),)]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE events SET status = 'finished' WHERE id = %s", (race["event"],))
    await running.stop()


async def test_definition_is_reloaded_every_refresh_interval(
    settings: config.Settings, nursery: trio.Nursery
) -> None:
    running = await start_app(nursery, attrs.evolve(settings, domain_refresh_s=1.0))
    registry = running.app.metrics.registry

    def loads() -> float:
        return sum(
            registry.get_sample_value("processor_domain_definition_loads_total", {"outcome": o})
            or 0.0
            for o in ("missing", "failed", "unchanged", "changed")
        )

    first = loads()
    await wait_for(lambda: loads() >= first + 2, 10, what="two timed reloads")
    await running.stop()


async def test_a_reload_times_fixes_the_device_sent_before_its_entry_existed(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    """The car drove the stage before the organisers added its entry: its fixes are stored
    but were nobody's to time. ``processor domain reload`` after adding the entry times
    them, with no new fix from the device."""
    url = settings.postgres_url
    race: dict[str, Any] = insert_race(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM entries WHERE id = %s", (race["entry"],))
    running = await start_app(nursery, settings)
    try:
        fixes = [fix(0, 13.99), fix(10, 14.01), fix(90, 14.09), fix(100, 14.11)]
        publish(
            sync_redis, settings.telemetry_stream, [position_of(race["imei"], f) for f in fixes]
        )

        def stored() -> int:
            [(n,)] = rows(url, "SELECT count(*) FROM positions WHERE device_id = %s", race["imei"])
            return int(n)

        await wait_for(lambda: stored() == len(fixes), 20, what="fixes stored")
        with psycopg.connect(url, autocommit=True) as conn:
            [(entry,)] = conn.execute(
                "INSERT INTO entries (event_id, device_id, number)"
                " SELECT %s, id, '7' FROM devices WHERE imei = %s RETURNING id",
                (race["event"], race["imei"]),
            ).fetchall()
        assert rows(url, "SELECT 1 FROM timing_records WHERE entry_id = %s", entry) == []
        result = await trio.to_thread.run_sync(cli, settings, "domain", "reload", "--json")
        assert result.json()["receivers"] == 1

        def crossed() -> list[tuple[Any, ...]]:
            return rows(
                url,
                "SELECT kind, crossed_at FROM timing_records WHERE entry_id = %s"
                " ORDER BY crossed_at",
                entry,
            )

        await wait_for(lambda: len(crossed()) == 4, 20, what="the stored fixes timed")
        assert crossed() == [
            ("start", at(5)), ("checkpoint", at(30)), ("checkpoint", at(60)), ("finish", at(95))
        ]  # fmt: skip
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE events SET status = 'finished' WHERE id = %s", (race["event"],))
    await running.stop()
