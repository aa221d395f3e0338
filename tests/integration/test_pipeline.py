"""The pipeline end to end, in-process: real Redis, real PostgreSQL, the real nursery tree."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import attrs
import httpx
import psycopg
import pytest
import redis
import trio

from processor import config, exit_codes
from processor.core.codec import encode
from processor.logs import make_logger
from tests.helpers import (
    BASE_TIME,
    RunningApp,
    count_rows,
    group_pending,
    make_position,
    publish,
    publish_fields,
    start_app,
    wait_for,
)


@pytest.fixture
async def running(settings: config.Settings, nursery: trio.Nursery) -> AsyncIterator[RunningApp]:
    running = await start_app(nursery, settings)
    yield running
    if not running.done.is_set():
        await running.stop()


def _prefix() -> str:
    return f"T{uuid.uuid4().hex[:10]}"


async def test_records_become_rows_byte_for_byte(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    prefix = _prefix()
    positions = [make_position(f"{prefix}-{d}", second=s) for d in range(5) for s in range(20)]
    publish(sync_redis, settings.telemetry_stream, positions)

    await wait_for(
        lambda: count_rows(settings.postgres_url, prefix) == len(positions), what="all rows"
    )
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="all acked"
    )

    with psycopg.connect(settings.postgres_url) as conn:
        row = conn.execute(
            "SELECT device_id, ts, latitude, longitude, altitude, heading, speed, satellites,"
            " priority, event_io_id, fix_valid, attributes::text, received_at,"
            " attributes->>'16', decode(substr(attributes->>'10', 3), 'hex')"
            " FROM positions WHERE device_id = %s AND ts = %s",
            (f"{prefix}-3", BASE_TIME + timedelta(seconds=7)),
        ).fetchone()
    assert row is not None
    p = make_position(f"{prefix}-3", second=7)
    assert row[:11] == (
        p.device_id,
        p.ts,
        p.latitude,
        p.longitude,
        p.altitude,
        p.heading,
        p.speed,
        p.satellites,
        p.priority,
        p.event_io_id,
        True,
    )
    assert json.loads(row[11]) == {
        "239": 1,
        "66": 12850,
        "16": 18446744073709551615,
        "10": "\\x010203",
    }
    assert row[12] == p.received_at
    assert row[13] == "18446744073709551615"
    assert row[14] == b"\x01\x02\x03"

    state = running.app.states.get(f"{prefix}-3")
    assert state is not None
    assert state.last_position is not None
    assert state.last_position.ts == BASE_TIME + timedelta(seconds=19)
    assert state.position_count_session == 20


async def test_integers_no_float_holds_are_stored_exactly_and_named_where_they_can_be(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    """The contract lets a ``__bigint`` have any number of digits. Beyond a float's range
    the scaled odometer cannot be named (its exact value stays in ``attributes``), an
    unscaled name carries it whole, and neither stops the pipeline."""
    prefix = _prefix()
    huge = 10**400
    odd = make_position(f"{prefix}-0", attributes={"16": huge, "21": 2**70, "66": 12850})
    plain = make_position(f"{prefix}-0", second=1)
    publish(sync_redis, settings.telemetry_stream, [odd, plain])

    await wait_for(lambda: count_rows(settings.postgres_url, prefix) == 2, what="both rows")
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="all acked"
    )
    with psycopg.connect(settings.postgres_url) as conn:
        rows = conn.execute(
            "SELECT attributes->>'16', derived::text FROM positions WHERE device_id = %s"
            " ORDER BY ts",
            (odd.device_id,),
        ).fetchall()
    assert rows[0][0] == str(huge)
    assert json.loads(rows[0][1]) == {"gsm_signal": 2**70, "external_voltage_v": 12.85}
    assert rows[1][0] == "18446744073709551615"
    assert json.loads(rows[1][1])["odometer_km"] == pytest.approx(18446744073709551.615)


async def test_redelivery_creates_no_duplicates(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    prefix = _prefix()
    positions = [make_position(f"{prefix}-{d}", second=s) for d in range(3) for s in range(10)]
    publish(sync_redis, settings.telemetry_stream, positions)
    await wait_for(lambda: count_rows(settings.postgres_url, prefix) == 30, what="first copy")
    publish(sync_redis, settings.telemetry_stream, positions + positions[:5])
    rows = running.app.metrics.rows
    await wait_for(lambda: rows.labels("duplicate")._value.get() >= 35, what="duplicates seen")
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="all acked"
    )
    assert count_rows(settings.postgres_url, prefix) == 30
    assert rows.labels("inserted")._value.get() == 30
    assert rows.labels("failed")._value.get() == 0


async def test_poison_is_dead_lettered_with_reason_and_acked(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    prefix = _prefix()
    good = make_position(f"{prefix}-ok")
    publish(sync_redis, settings.telemetry_stream, [good])
    ids = publish_fields(
        sync_redis,
        settings.telemetry_stream,
        [
            {b"payload": b"{not json", b"trace": b"abc"},
            {b"payload": json.dumps({"device_id": "bad id!"}).encode()},
            {b"v": b"2", b"payload": b"{}"},
        ],
    )
    dlq = settings.dlq_stream_key
    await wait_for(lambda: sync_redis.xlen(dlq) == 3, what="3 dead letters")
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="poison acked"
    )
    letters = {f[b"source_id"].decode(): f for _, f in sync_redis.xrange(dlq)}
    assert set(letters) == set(ids)
    first = letters[ids[0]]
    assert first[b"payload"] == b"{not json"
    assert first[b"trace"] == b"abc"
    assert first[b"error_kind"] == b"malformed_payload"
    assert first[b"source_stream"] == settings.telemetry_stream.encode()
    assert first[b"group"] == b"processor"
    assert first[b"consumer"] == settings.consumer_name.encode()
    assert first[b"delivery_count"] == b"1"
    assert first[b"failed_at"].endswith(b"Z")
    assert letters[ids[1]][b"error_kind"] in {b"invalid_field", b"missing_field"}
    assert letters[ids[2]][b"error_kind"] == b"unknown_version"
    assert count_rows(settings.postgres_url, prefix) == 1


async def test_http_endpoints(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    url = running.app.http_url
    assert url is not None
    async with httpx.AsyncClient(base_url=url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, "ready before the first record arrives"
    publish(sync_redis, settings.telemetry_stream, [make_position(_prefix())])
    await wait_for(lambda: running.app.metrics.acked._value.get() >= 1, what="one ack")
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = (await client.get("/metrics")).text
        for name in (
            "processor_records_consumed_total",
            "processor_rows_total",
            "processor_batch_write_seconds_bucket",
            "processor_end_to_end_seconds",
            "processor_group_lag_entries",
            "processor_group_pending_entries",
            "processor_device_states",
            "processor_reconnects_total",
        ):
            assert name in body, name
        running.app.shutdown.begin("test")
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert "shutdown" in not_ready.json()["reasons"]
    assert await running.stop() == exit_codes.OK


async def test_late_fix_does_not_replace_newer_state(
    running: RunningApp, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    device = f"{_prefix()}-late"
    publish(sync_redis, settings.telemetry_stream, [make_position(device, second=100)])
    await wait_for(lambda: device in running.app.states, what="device state")
    publish(sync_redis, settings.telemetry_stream, [make_position(device, second=5)])
    await wait_for(lambda: count_rows(settings.postgres_url, device) == 2, what="late row")
    state = running.app.states.get(device)
    assert state is not None
    assert state.last_position is not None
    assert state.last_position.ts == BASE_TIME + timedelta(seconds=100)
    await wait_for(lambda: state.position_count_session == 2, what="count")


LIFECYCLE = [
    "starting",
    "postgres connected",
    "redis connected",
    "migrations applied",
    "consumer started",
    "ready",
]


async def test_logs_are_json_lines_with_lifecycle_in_order_and_batch_lines_at_debug(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    out = io.StringIO()
    started = await start_app(nursery, settings, log=make_logger("debug", file=out))
    app = started.app
    prefix = _prefix()
    positions = [make_position(f"{prefix}-{d}", second=s) for d in range(2) for s in range(4)]
    publish(sync_redis, settings.telemetry_stream, positions)
    await wait_for(lambda: app.metrics.acked._value.get() >= len(positions), what="all acked")
    publish(sync_redis, settings.telemetry_stream, positions[:3])  # re-delivered: duplicates
    await wait_for(lambda: app.metrics.acked._value.get() >= len(positions) + 3, what="dups")
    assert await started.stop() == exit_codes.OK

    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    assert lines, "nothing logged"
    for line in lines:
        assert isinstance(line["event"], str)
        assert line["level"] in {"debug", "info", "warning", "error"}
        moment = datetime.fromisoformat(line["timestamp"])
        assert moment.utcoffset() == timedelta(0), line
    events = [line["event"] for line in lines]
    for event in LIFECYCLE:
        assert events.count(event) == 1, (event, events)
    order = [events.index(event) for event in LIFECYCLE]
    assert order == sorted(order), [events[i] for i in sorted(order)]
    by_event = {line["event"]: line for line in lines}
    assert all(by_event[event]["level"] == "info" for event in LIFECYCLE)
    started = by_event["consumer started"]
    assert (started["stream"], started["group"], started["consumer"]) == (
        settings.telemetry_stream,
        settings.consumer_group,
        settings.consumer_name,
    )
    assert by_event["migrations applied"]["storage"] in {"plain", "hypertable"}

    consumed = [line for line in lines if line["event"] == "consumed"]
    written = [line for line in lines if line["event"] == "written"]
    assert consumed
    assert written
    assert {line["level"] for line in consumed + written} == {"debug"}
    assert sum(line["n"] for line in consumed) == len(positions) + 3
    assert sum(line["inserted"] for line in written) == len(positions)
    assert sum(line["duplicates"] for line in written) == 3
    assert sum(line["failed"] for line in written) == 0


async def test_info_level_hides_the_per_batch_lines(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    out = io.StringIO()
    started = await start_app(nursery, settings, log=make_logger("info", file=out))
    app = started.app
    publish(sync_redis, settings.telemetry_stream, [make_position(_prefix())])
    await wait_for(lambda: app.metrics.acked._value.get() >= 1, what="one ack")
    assert await started.stop() == exit_codes.OK
    events = {json.loads(text)["event"] for text in out.getvalue().splitlines()}
    assert set(LIFECYCLE) <= events
    assert not events & {"consumed", "written", "acked"}


def _lock_waiters(database_url: str) -> int:
    """Sessions of this database blocked on a lock (the writer behind our LOCK TABLE)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("writers", [1, 2])
async def test_consumer_stops_reading_while_the_writer_cannot_write(
    settings: config.Settings,
    fresh_database_url: str,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
    writers: int,
) -> None:
    """Backpressure: with the writers blocked, what is read stays within the bounded
    channels (a few read batches), and the rest waits in Redis, not in our memory. Then
    every record is stored once and acked, with one writer or two."""
    read_count, capacity = 50, 2
    settings = attrs.evolve(
        settings,
        postgres_url=fresh_database_url,
        read_count=read_count,
        batch_max=read_count,
        channel_capacity=capacity,
        writers=writers,
    )
    started = await start_app(nursery, settings, log=make_logger("warning"))
    app = started.app
    prefix = _prefix()
    positions = [make_position(f"{prefix}-{d}", second=s) for d in range(30) for s in range(100)]

    # Each writer's batch + its batcher's remainder + the channel + the one read held by
    # the consumer while it waits to hand it over: everything else must stay in Redis.
    # The reads sent ahead (READ_AHEAD) are taken from Redis too, but not decoded.
    bound = (capacity + 1 + 2 * settings.writers) * read_count
    taken = bound + settings.read_ahead * read_count
    consumed = app.metrics.consumed
    with psycopg.connect(fresh_database_url) as locker:
        locker.execute("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE")
        publish(sync_redis, settings.telemetry_stream, positions)
        await wait_for(
            lambda: _lock_waiters(fresh_database_url) >= settings.writers, what="writers blocked"
        )
        await wait_for(lambda: consumed._value.get() >= capacity * read_count, what="filled")
        # A negative property needs a window: unthrottled, the consumer reads all 3000
        # entries in well under this (they are in Redis already, no blocking read).
        await trio.sleep(1.0)
        assert consumed._value.get() <= bound
        assert group_pending(sync_redis, settings.telemetry_stream) <= taken
        assert app.metrics.acked._value.get() == 0  # nothing committed, nothing acked
        locker.rollback()

    await wait_for(
        lambda: count_rows(fresh_database_url, prefix) == len(positions), 60, what="all rows"
    )
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="all acked"
    )
    assert consumed._value.get() == len(positions)
    assert await started.stop() == exit_codes.OK


async def test_rows_postgres_rejects_are_failed_the_rest_of_the_batch_commits(
    settings: config.Settings,
    fresh_database_url: str,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    """A row PostgreSQL refuses (here: a CHECK constraint the test adds) is isolated by
    bisection and reported ``failed`` and dead-lettered; its batch-mates are inserted and
    acked; nothing is left pending."""
    settings = attrs.evolve(settings, postgres_url=fresh_database_url, batch_linger_ms=500)
    started = await start_app(nursery, settings, log=make_logger("warning"))
    app = started.app
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE positions ADD CONSTRAINT test_refuses_marked"
            " CHECK (device_id NOT LIKE '%-refused')"
        )
    prefix = _prefix()
    good = [make_position(f"{prefix}-ok", second=s) for s in range(10)]
    bad = [make_position(f"{prefix}-refused", second=s) for s in (3, 7)]
    records = good[:3] + bad[:1] + good[3:7] + bad[1:] + good[7:]
    ids = publish(sync_redis, settings.telemetry_stream, records)
    bad_ids = {ids[3], ids[8]}

    dlq = settings.dlq_stream_key
    await wait_for(lambda: sync_redis.xlen(dlq) == 2, what="2 dead letters")
    await wait_for(
        lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="all acked"
    )
    rows = app.metrics.rows
    assert count_rows(fresh_database_url, f"{prefix}-ok") == len(good)
    assert count_rows(fresh_database_url, f"{prefix}-refused") == 0
    assert rows.labels("inserted")._value.get() == len(good)
    assert rows.labels("failed")._value.get() == len(bad)
    assert rows.labels("duplicate")._value.get() == 0
    letters = {f[b"source_id"].decode(): f for _, f in sync_redis.xrange(dlq)}
    assert set(letters) == bad_ids
    for entry_id, letter in letters.items():
        original = records[ids.index(entry_id)]
        assert letter[b"error_kind"] == b"write_rejected"
        assert b"test_refuses_marked" in letter[b"error"]
        assert letter[b"payload"] == encode(original)[b"payload"]
    assert await started.stop() == exit_codes.OK
