"""Outages: Redis or PostgreSQL goes away mid-load and comes back.

The processor must neither crash nor lose work: it reports *why* it is not ready on
``/readyz`` while a dependency is away, reconnects with backoff on its own, and once the
dependency is back every record ends up in ``positions`` exactly once.

Each test breaks a throwaway server of its own (``tests.servers``); the Redis one keeps
an AOF with ``appendfsync always``, so the stream and group survive a ``kill -9``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from processor import exit_codes
from tests.fault import Workload, pending_count, publish_all, row_counts, row_keys
from tests.process import Processor, processor_env
from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server, wait_until

N = 40_000  # published before the daemon starts: a backlog of a few seconds' work
AFTER = 5_000  # published once the server is back: new work flows too

# End-to-end: every test here runs `processor run` subprocesses (the marker's meaning).
pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _poll_not_ready(proc: Processor, component: str, timeout: float = 15) -> dict[str, Any]:
    """Poll /readyz until it answers 503 naming ``component``; the body it gave."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[int, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        assert proc.alive, f"processor died during the outage\n{proc.tail()}"
        status, body = proc.readyz()
        seen.append((status, body))
        if status == 503 and component in body.get("reasons", {}):
            return body
        time.sleep(0.05)
    raise AssertionError(f"/readyz never said {component!r} is down; last: {seen[-3:]}")


def _assert_exactly_once(database_url: str, work: Workload) -> None:
    total, distinct = row_counts(database_url, work.prefix)
    assert total == distinct == len(work.keys), (total, distinct, len(work.keys))
    assert row_keys(database_url, work.prefix) == set(work.keys)


def test_redis_killed_and_restarted_mid_load(
    own_redis: RedisServer, fresh_database_url: str, stream_key: str, tmp_path: Path
) -> None:
    client = own_redis.client()
    env = processor_env(own_redis.url, fresh_database_url, stream_key, tmp_path)
    # The backlog is there before the daemon starts (its group starts at 0), so the
    # outage surely hits work in flight however fast this machine is.
    work = Workload.make(N + AFTER)
    publish_all(client, stream_key, work.fields[:N])
    proc = Processor(env)
    try:
        proc.wait_ready()
        wait_until(
            lambda: row_counts(fresh_database_url, work.prefix)[0] >= 2_000, 30, "rows", 0.02
        )
        pending_at_kill = pending_count(client, stream_key)
        rows_at_kill = row_counts(fresh_database_url, work.prefix)[0]
        assert pending_at_kill, "the outage must hit in-flight work"
        assert rows_at_kill < N, "the outage must hit in-flight work"

        own_redis.kill()
        body = _poll_not_ready(proc, "redis")
        assert proc.get("/healthz")[0] == 200  # alive, just not ready

        own_redis.start()
        back_at = time.monotonic()
        assert client.xlen(stream_key) == N, "setup: the AOF must keep the stream"
        wait_until(lambda: proc.readyz()[0] == 200, 30, "ready again after the restart")
        ready_after = time.monotonic() - back_at
        publish_all(client, stream_key, work.fields[N:])
        wait_until(
            lambda: (
                row_counts(fresh_database_url, work.prefix)[0] == N + AFTER
                and pending_count(client, stream_key) == 0
            ),
            60,
            "every record stored and acked",
        )
        reconnects = proc.metric('processor_reconnects_total{service="redis"}')
        assert proc.events("redis reconnected"), proc.tail()
        assert reconnects >= 1
        assert proc.stop() == exit_codes.OK, proc.tail()
    finally:
        proc.close()
        client.close()

    _assert_exactly_once(fresh_database_url, work)
    print(
        f"\nredis outage: /readyz said {body['reasons']};"
        f" at the kill {rows_at_kill} rows, {pending_at_kill} pending;"
        f" ready {ready_after:.2f} s after the restart"
    )


def test_postgres_down_while_starting_is_waited_out(
    own_redis: RedisServer, own_pg: PostgresServer, stream_key: str, tmp_path: Path
) -> None:
    """PostgreSQL goes away after the start-up connect, before the migrations: an outage
    like any other (not ready, wait, carry on), not a panic (exit 70 and a dump)."""
    database_url = own_pg.create_database()
    own_redis.kill()  # holds the start-up between "postgres connected" and the migrations
    proc = Processor(processor_env(own_redis.url, database_url, stream_key, tmp_path))
    try:
        proc.wait_log("postgres connected")
        proc.wait_log("redis unavailable at start")
        own_pg.stop("fast")
        own_redis.start()
        proc.wait_log("redis connected")
        body = _poll_not_ready(proc, "postgres")
        own_pg.start()
        proc.wait_ready(30)
        work = Workload.make(1_000)
        publish_all(own_redis.client(), stream_key, work.fields)
        wait_until(lambda: row_counts(database_url, work.prefix)[0] == 1_000, 30, "rows")
        assert proc.stop() == exit_codes.OK, proc.tail()
    finally:
        proc.close()
    assert not list(tmp_path.glob("processor-panic-*.json"))
    print(f"\npostgres down at start-up: /readyz said {body['reasons']}")


def test_postgres_restarted_mid_load(
    own_pg: PostgresServer,
    redis_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    database_url = own_pg.create_database()
    env = processor_env(redis_url, database_url, stream_key, tmp_path)
    work = Workload.make(N + AFTER)
    publish_all(sync_redis, stream_key, work.fields[:N])
    proc = Processor(env)
    try:
        proc.wait_ready()
        wait_until(lambda: row_counts(database_url, work.prefix)[0] >= 2_000, 30, "rows", 0.02)
        pending_at_stop = pending_count(sync_redis, stream_key)
        rows_at_stop = row_counts(database_url, work.prefix)[0]
        assert pending_at_stop, "the outage must hit in-flight work"
        assert rows_at_stop < N, "the outage must hit in-flight work"

        own_pg.stop("fast")
        body = _poll_not_ready(proc, "postgres")
        assert proc.get("/healthz")[0] == 200

        own_pg.start()
        back_at = time.monotonic()
        wait_until(lambda: proc.readyz()[0] == 200, 30, "ready again after the restart")
        ready_after = time.monotonic() - back_at
        publish_all(sync_redis, stream_key, work.fields[N:])
        wait_until(
            lambda: (
                row_counts(database_url, work.prefix)[0] == N + AFTER
                and pending_count(sync_redis, stream_key) == 0
            ),
            60,
            "every record stored and acked",
        )
        assert proc.events("postgres reconnected"), proc.tail()
        assert proc.metric('processor_reconnects_total{service="postgres"}') >= 1
        assert proc.stop() == exit_codes.OK, proc.tail()
    finally:
        proc.close()

    _assert_exactly_once(database_url, work)
    print(
        f"\npostgres outage: /readyz said {body['reasons']};"
        f" at the stop {rows_at_stop} rows, {pending_at_stop} pending;"
        f" ready {ready_after:.2f} s after the restart"
    )


def test_postgres_down_while_idle_takes_the_instance_out_of_rotation(
    own_pg: PostgresServer, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    """No records flow, so no write notices: the probe must, and clear it once it's back."""
    database_url = own_pg.create_database()
    env = processor_env(redis_url, database_url, stream_key, tmp_path)
    proc = Processor(env)
    try:
        proc.wait_ready()
        assert proc.readyz()[0] == 200
        own_pg.stop("fast")
        body = _poll_not_ready(proc, "postgres_probe")
        assert proc.get("/healthz")[0] == 200
        own_pg.start()
        wait_until(lambda: proc.readyz()[0] == 200, 30, "ready again after the restart")
        assert proc.events("postgres probe answered again"), proc.tail()
        assert proc.stop() == exit_codes.OK, proc.tail()
    finally:
        proc.close()
    print(f"\nidle postgres outage: /readyz said {body['reasons']}")
