"""The simulator against a real Redis: what lands in the stream is what the processor reads.

Records are read back with XRANGE and decoded with the processor's own codec against
the real clock, which also proves the simulated clock never runs ahead of it. The last
tests run what ``ops/demo.sh`` runs (a race, then the feed, through the real processor)
and ``--create-race`` against a real Redis Cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
import trio

from processor import config, exit_codes
from processor.core.codec import decode
from processor.core.errors import PoisonRecord
from processor.core.sharding import shard_for
from processor.domain.plugin import DomainPlugin
from processor.simulator import command
from tests.helpers import group_pending, start_app, wait_for
from tests.servers import RedisClusterServers, redis_cluster


def run(redis_url: str, stream: str, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([*argv, "--stream", stream])
    settings = config.load({"REDIS_URL": redis_url})
    return command.main(args, settings)


def test_count_records_are_published_and_decode(
    redis_url: str, stream_key: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--count", "400", "--rate", "0", "--seed", "11", "--poison-ratio", "0.1", "--json")
    assert run(redis_url, stream_key, *argv) == exit_codes.OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["published"] == 400
    assert summary["stream"] == stream_key
    assert sync_redis.xlen(stream_key) == 400

    now = datetime.now(UTC)
    valid = poison = 0
    devices = set()
    entries: list[tuple[bytes, dict[bytes, bytes]]] = sync_redis.xrange(stream_key)  # type: ignore[assignment]
    for _, fields in entries:
        try:
            position = decode(fields, now=now, future_tolerance_s=600)
        except PoisonRecord:
            poison += 1
        else:
            valid += 1
            devices.add(position.device_id)
            assert position.received_at is not None
            assert position.received_at <= now
    assert (valid, poison) == (summary["valid"], summary["poison"])
    assert poison > 10
    assert len(devices) == summary["devices"] == 10


def test_rate_is_kept(
    redis_url: str, stream_key: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--count", "100", "--rate", "200", "--seed", "1", "--json")
    assert run(redis_url, stream_key, *argv) == exit_codes.OK
    summary = json.loads(capsys.readouterr().out)
    assert sync_redis.xlen(stream_key) == 100
    # 100 records at 200/s: about half a second (the first batch goes out at once).
    assert 0.4 <= summary["elapsed_s"] <= 2.0


def test_maxlen_trims_the_stream(
    redis_url: str, stream_key: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--count", "2000", "--rate", "0", "--maxlen", "100", "--seed", "2")
    assert run(redis_url, stream_key, *argv) == exit_codes.OK
    assert "published 2000 records" in capsys.readouterr().out
    assert sync_redis.xlen(stream_key) < 1_000  # "~": trimmed by whole nodes, not exactly


def test_redis_unreachable_exits_unavailable(
    stream_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run("redis://127.0.0.1:1/0", stream_key, "--count", "5", "--rate", "0")
    assert code == exit_codes.UNAVAILABLE
    assert "Redis unavailable" in capsys.readouterr().err


def test_python_dash_m_runs_with_the_environment(
    redis_url: str, stream_key: str, sync_redis: redis.Redis
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "REDIS_TELEMETRY_STREAM": stream_key}
    argv = ["--count", "50", "--rate", "0", "--seed", "4", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "processor.simulator", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["published"] == 50
    assert sync_redis.xlen(stream_key) == 50


def test_python_dash_m_reports_bad_configuration() -> None:
    env = {**os.environ, "REDIS_URL": "http://nope"}
    done = subprocess.run(
        [sys.executable, "-m", "processor.simulator", "--count", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == exit_codes.CONFIG_ERROR
    assert "REDIS_URL" in done.stderr


def test_sharded_settings_publish_each_device_to_its_shard(
    redis_url: str, stream_key: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--count", "300", "--rate", "0", "--seed", "3", "--json"])
    settings = config.load(
        {"REDIS_URL": redis_url, "REDIS_TELEMETRY_STREAM": f"{stream_key}:{{0..3}}"}
    )
    shards = settings.telemetry_streams
    try:
        assert command.main(args, settings) == exit_codes.OK
        summary = json.loads(capsys.readouterr().out)
        assert summary["stream"] == f"4 shards {shards[0]}..{shards[-1]}"
        assert sum(sync_redis.xlen(s) for s in shards) == 300
        now = datetime.now(UTC)
        for shard in shards:
            for _, fields in sync_redis.xrange(shard):
                try:
                    position = decode(fields, now=now, future_tolerance_s=600)  # type: ignore[arg-type]
                except PoisonRecord:
                    continue
                assert shard_for(position.device_id, shards) == shard
    finally:
        sync_redis.delete(*shards)


def test_duration_bounds_the_run(
    redis_url: str, stream_key: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("--duration", "0.5", "--rate", "200", "--devices", "700", "--seed", "5", "--json")
    assert run(redis_url, stream_key, *argv) == exit_codes.OK
    summary = json.loads(capsys.readouterr().out)
    # 0.5 s at 200/s: about 100 records (batches of 10), then it stops by itself. Never
    # more than the rate allows (+2 batches); fewer is only a loaded machine falling
    # behind the pacing (CI once saw 70), so the floor just says that it ran.
    assert 10 <= summary["published"] <= 120
    assert sync_redis.xlen(stream_key) == summary["published"]
    assert 0.4 <= summary["elapsed_s"] <= 2.0


# -- the demo's path: a race, then the feed, through a running processor ---------------


def _simulate(settings: config.Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.main(parser.parse_args(argv), settings)


def _summary(out: str) -> dict[str, Any]:
    """The ``--json`` summary among the in-process app's log lines (also JSON, on stdout)."""
    found = [json.loads(line) for line in out.splitlines() if line.startswith('{"stream":')]
    assert len(found) == 1, out
    summary: dict[str, Any] = found[0]
    return summary


def _domain_idle(domain: DomainPlugin) -> bool:
    """Nothing queued for the timing worker, and the worker waiting for more."""
    stats = domain._receive.statistics()
    return stats.current_buffer_used == 0 and stats.tasks_waiting_receive == 1


def _crossings(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT kind, device_id FROM timing_records").fetchall()
    return [(str(kind), str(device)) for kind, device in rows]


def _rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM positions").fetchone()
    assert row is not None
    return int(row[0])


async def test_simulated_rally_is_stored_timed_and_dead_lettered_by_the_processor(
    fresh_database_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What ``ops/demo.sh`` shows, as a test: every valid record is a row, every poison
    record one dead letter, the race created by ``--create-race`` reaches the running
    instance by the reload request, and the feed crosses its lines."""
    settings = config.load(
        {
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "POSTGRES_URL": fresh_database_url,
            "REDIS_TELEMETRY_STREAM": stream_key,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            "WS_HOST": "127.0.0.1",
            "WS_PORT": "0",
            "BATCH_LINGER_MS": "20",
            "READ_BLOCK_MS": "200",
            "LAG_SAMPLE_INTERVAL_S": "0.2",
            "PANIC_DUMP_DIR": os.environ.get("TMPDIR", "/tmp"),
        }
    )
    running = await start_app(nursery, settings)
    domain = next(p for p in running.app.plugins if isinstance(p, DomainPlugin))
    assert domain.definitions.current.entries_by_device == {}  # no race tables yet
    argv = ("--devices", "20", "--seed", "7", "--count", "3000", "--rate", "0")
    argv += ("--poison-ratio", "0.02", "--create-race", "--json")
    code = await trio.to_thread.run_sync(lambda: _simulate(settings, *argv))
    assert code == exit_codes.OK
    out = capsys.readouterr().out
    assert "reload requested from 1 running instance(s)" in out
    summary = _summary(out)
    assert summary["poison"] > 20
    assert summary["late"] > 0

    dlq = settings.dlq_stream_key
    await wait_for(lambda: _rows(fresh_database_url) == summary["valid"], 60, what="rows")
    await wait_for(lambda: sync_redis.xlen(dlq) == summary["poison"], what="dead letters")
    await wait_for(lambda: group_pending(sync_redis, stream_key) == 0, what="all acked")
    # Loaded on the reload request: the 30 s refresh would come after this deadline.
    assert len(domain.definitions.current.entries_by_device) == 20
    # Every fix reached the domain before its ack: idle now means timing is all written.
    await wait_for(lambda: _domain_idle(domain), what="the race domain done with the feed")
    crossings = _crossings(fresh_database_url)
    assert len(crossings) > 10
    assert {kind for kind, _ in crossings} <= {"start", "checkpoint", "finish"}
    assert "start" in {kind for kind, _ in crossings}
    assert {device for _, device in crossings} <= set(domain.definitions.current.entries_by_device)
    assert _rows(fresh_database_url) == summary["valid"]  # and nothing more
    assert sync_redis.xlen(dlq) == summary["poison"]
    assert await running.stop() == 0
    # The live timing is the stored fixes' timing: a replay from `positions` changes
    # nothing. (Records processed before the new race loaded would be missing here.)
    event = re.search(r"race: event (\d+) ", out)
    assert event is not None, out
    replay = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "processor", "replay", "--event", event.group(1)],
            env={**os.environ, "POSTGRES_URL": fresh_database_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.splitlines() == [
        "timing_records: 0 added, 0 changed, 0 removed",
        "stage_results: 0 added, 0 changed, 0 removed",
    ]


# -- a Redis Cluster -------------------------------------------------------------------

CLUSTER_SHARDS = "sim:{0..7}"


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    with redis_cluster() as servers:
        yield servers


@pytest.mark.slow
def test_create_race_and_shards_on_a_redis_cluster(
    cluster: RedisClusterServers,
    fresh_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``redis+cluster://`` URL: the reload request and every shard's records go
    through the cluster client, each record to its device's shard."""
    settings = config.load(
        {
            "REDIS_URL": cluster.url,
            "POSTGRES_URL": fresh_database_url,
            "REDIS_TELEMETRY_STREAM": CLUSTER_SHARDS,
        }
    )
    argv = ("--count", "400", "--rate", "0", "--seed", "3", "--poison-ratio", "0.05")
    assert _simulate(settings, *argv, "--create-race", "--json") == exit_codes.OK
    out = capsys.readouterr().out
    assert "reload requested from 0 running instance(s)" in out
    summary = _summary(out)
    client = cluster.client()
    try:
        shards = settings.telemetry_streams
        assert sum(client.xlen(s) for s in shards) == 400
        assert len({client.get_node_from_key(s).port for s in shards}) > 1
        now = datetime.now(UTC)
        valid = 0
        for shard in shards:
            for _, fields in client.xrange(shard):
                try:
                    position = decode(fields, now=now, future_tolerance_s=600)  # type: ignore[arg-type]
                except PoisonRecord:
                    continue
                valid += 1
                assert shard_for(position.device_id, shards) == shard
        assert valid == summary["valid"]
    finally:
        client.close()


def test_unreachable_cluster_exits_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    settings = config.load(
        {"REDIS_URL": "redis+cluster://127.0.0.1:1", "REDIS_TELEMETRY_STREAM": CLUSTER_SHARDS}
    )
    assert _simulate(settings, "--count", "5", "--rate", "0") == exit_codes.UNAVAILABLE
    assert "Redis unavailable" in capsys.readouterr().err
