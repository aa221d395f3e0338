"""Crashes: an error nobody handles ends the process with 70 and a dump; bad config with 2.

An exception the tree does not understand must not be swallowed or retried forever: it is
logged with its traceback, the state is dumped to ``PANIC_DUMP_DIR``, and the exit code
tells the supervisor to restart. A configuration error is reported before anything
connects, in one line naming the variable, with the code that says "fix, don't restart".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
import redis

from processor import exit_codes
from tests.fault import Workload, pending_count, publish_all, row_counts
from tests.process import Processor, panic_dumps, processor_env, run_processor_once
from tests.servers import wait_until

# End-to-end: every test here runs `processor run` subprocesses (the marker's meaning).
pytestmark = pytest.mark.slow


def test_dropped_table_panics_with_traceback_dump_and_exit_70(
    fresh_database_url: str,
    redis_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    dump_dir = tmp_path / "dumps"
    env = processor_env(
        redis_url, fresh_database_url, stream_key, dump_dir, REDIS_CONSUMER_NAME="crasher"
    )
    proc = Processor(env)
    try:
        proc.wait_ready()
        first = Workload.make(1_000)
        publish_all(sync_redis, stream_key, first.fields)
        wait_until(
            lambda: row_counts(fresh_database_url, first.prefix)[0] == 1_000, 30, "first rows"
        )
        wait_until(lambda: pending_count(sync_redis, stream_key) == 0, 10, "first acks")

        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            conn.execute("DROP TABLE positions")
        # New devices: the writer's first statement for them hits the missing table.
        second = Workload.make(100)
        publish_all(sync_redis, stream_key, second.fields)
        code = proc.wait(30)
    finally:
        proc.close()

    assert code == exit_codes.PANIC, proc.tail()
    [panic] = proc.events("panic: unexpected error, exiting")
    assert panic["level"] == "error"
    assert panic["exit_code"] == exit_codes.PANIC
    assert "Traceback" in panic["exception"]
    assert "UndefinedTable" in panic["exception"]
    assert 'relation "positions" does not exist' in panic["exception"]

    [dump_path] = panic_dumps(dump_dir)
    assert panic["dump"] == str(dump_path)
    dump = json.loads(dump_path.read_text())
    assert dump["pid"] == proc.pid
    assert "UndefinedTable" in dump["error"]
    assert any("UndefinedTable" in frame for frame in dump["traceback"])
    assert dump["settings"]["telemetry_stream"] == stream_key
    assert dump["settings"]["consumer_name"] == "crasher"
    # The devices it had seen before the crash are in the dump.
    assert dump["device_states"] >= 200
    assert f"{first.prefix}-0000" in dump["devices"]
    # Nothing of the failed batch was acked: it waits for the fixed schema.
    assert pending_count(sync_redis, stream_key) == len(second.keys)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("READ_COUNT", "0"),
        ("SHUTDOWN_BUDGET_S", "soon"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_variable(
    variable: str, value: str, tmp_path: Path
) -> None:
    env = processor_env(
        # Nothing listens on port 1: a config error must be reported before any connect.
        "redis://127.0.0.1:1/0",
        "postgresql://postgres@127.0.0.1:1/none",
        "cfg:telemetry",
        tmp_path,
        **{variable: value},
    )
    result = run_processor_once(env, timeout=20)

    assert result.returncode == exit_codes.CONFIG_ERROR, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert repr(value) in lines[0]
    assert result.stdout == ""
    assert not os.listdir(tmp_path)
