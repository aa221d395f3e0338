"""The simulator against a real Redis: what lands in the stream is what the processor reads.

Records are read back with XRANGE and decoded with the processor's own codec against
the real clock, which also proves the simulated clock never runs ahead of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import redis

from processor import config, exit_codes
from processor.core.codec import decode
from processor.core.errors import PoisonRecord
from processor.core.sharding import shard_for
from processor.simulator import command


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
