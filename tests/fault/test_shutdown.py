"""Graceful shutdown of a real ``processor run``: SIGTERM drains, a stall hits the budget.

What a supervisor relies on:

- SIGTERM under load: no new reads after the signal, everything read is written and
  acked (the reads sent ahead included), exit 0 inside ``SHUTDOWN_BUDGET_S``; a restart
  finishes the rest, nothing lost or doubled.
- A drain that cannot finish (PostgreSQL stalled): exit 3 at the budget, the unfinished
  entries still pending in Redis, every acked entry has its row.
- A second SIGINT: exit 130 at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processor import exit_codes
from tests.fault import (
    Workload,
    id_key,
    keys_of,
    last_delivered,
    pending_count,
    pending_ids,
    publish_all,
    row_counts,
    row_keys,
)
from tests.process import Processor, processor_env
from tests.servers import PostgresServer, free_port, postgres_server, wait_until

READ_COUNT = 500
READ_AHEAD = 2

# End-to-end: every test here runs `processor run` subprocesses (the marker's meaning).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def stalled_pg(pg: PostgresServer) -> Iterator[PostgresServer]:
    """The module's throwaway PostgreSQL; resumed after the test whatever happened."""
    yield pg
    pg.resume()


@pytest.fixture
def procs() -> Iterator[list[Processor]]:
    started: list[Processor] = []
    yield started
    for proc in started:
        proc.close()


def _start(procs: list[Processor], env: dict[str, str]) -> Processor:
    proc = Processor(env)
    procs.append(proc)
    return proc


def _finish_and_check_exactly_once(
    procs: list[Processor],
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    database_url: str,
    work: Workload,
) -> None:
    """Restart (same consumer name: it re-reads its own pending first), drain, stop."""
    proc = _start(procs, env).wait_ready()
    wait_until(
        lambda: (
            row_counts(database_url, work.prefix)[0] == len(work.keys)
            and pending_count(client, stream) == 0
        ),
        60,
        "every record stored and acked after the restart",
    )
    assert proc.stop() == exit_codes.OK, proc.tail()
    total, distinct = row_counts(database_url, work.prefix)
    assert total == distinct == len(set(work.keys)) == len(work.keys)
    assert row_keys(database_url, work.prefix) == set(work.keys)


def test_sigterm_under_load_drains_acks_and_exits_0(
    procs: list[Processor],
    fresh_database_url: str,
    redis_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    budget = 10.0
    env = processor_env(
        redis_url,
        fresh_database_url,
        stream_key,
        tmp_path,
        SHUTDOWN_BUDGET_S=budget,
        READ_COUNT=READ_COUNT,
        READ_AHEAD=READ_AHEAD,
        REDIS_CONSUMER_NAME="drainer",
    )
    # The backlog is there before the daemon starts (its group starts at 0): the signal
    # is sure to land mid-drain however fast this machine is.
    work = Workload.make(40_000)
    ids = publish_all(sync_redis, stream_key, work.fields)
    id_to_key = dict(zip(ids, work.keys, strict=True))
    proc = _start(procs, env).wait_ready()

    wait_until(lambda: row_counts(fresh_database_url, work.prefix)[0] >= 5_000, 30, "5000 rows")
    sent_at = proc.terminate()
    proc.wait_log("shutdown requested", 5)
    # Read scopes are cancelled in the same step that logs the line, so the group's
    # delivery position now is where this consumer's reading ended, give or take the
    # XREADGROUPs sent before the signal: the consumer's own and up to READ_AHEAD sent
    # ahead, which Redis may serve after our XINFO (one after the other, and under load
    # the kernel may hand even one written first to Redis after it).
    delivered_at_signal = last_delivered(sync_redis, stream_key)
    code = proc.wait(budget + 5)
    elapsed = time.monotonic() - sent_at

    assert code == exit_codes.OK, proc.tail()
    assert elapsed < budget, f"exit took {elapsed:.2f} s, budget {budget} s"
    assert proc.events("stopped"), proc.tail()
    delivered_at_exit = last_delivered(sync_redis, stream_key)
    assert id_key(delivered_at_exit) < id_key(ids[-1]), (
        "the signal landed after everything was read: the test proves nothing"
    )
    delivered = {i for i in ids if id_key(i) <= id_key(delivered_at_exit)}
    pending = pending_ids(sync_redis, stream_key)
    assert pending <= delivered
    # No new reads after the signal: the group moved on by at most the reads already
    # sent. A consumer that kept reading would have taken many batches of the 30k+
    # backlog during the drain.
    late = {i for i in delivered if id_key(i) > id_key(delivered_at_signal)}
    in_flight = (1 + READ_AHEAD) * READ_COUNT
    assert len(late) <= in_flight, f"{len(late)} entries delivered after the signal"

    acked = delivered - pending
    rows = row_keys(fresh_database_url, work.prefix)
    # The ack rule both ways: every acked entry has its row, every row's entry is acked;
    # so a pending entry has no row, and nothing undelivered was written.
    assert keys_of(acked, id_to_key) == rows
    assert not keys_of(pending, id_to_key) & rows
    # A drain finishes everything read, the reads sent ahead collected at the signal
    # included; only the consumer's own read cut off by it (a reply never handed to the
    # writer) may be left pending.
    assert len(pending) <= READ_COUNT, len(pending)
    handed = sum(e.get("entries", 0) for e in proc.events("reads ahead handed on"))
    assert handed or len(late) <= READ_COUNT, proc.tail()
    print(
        f"\nSIGTERM after {len(rows)} rows acked; exit 0 in {elapsed:.2f} s;"
        f" delivered {len(delivered)} of {len(ids)} ({len(late)} after the signal's"
        f" log line); left pending {len(pending)};"
        f" reads ahead handed on: {handed}"
    )

    _finish_and_check_exactly_once(procs, env, sync_redis, stream_key, fresh_database_url, work)


def test_stalled_postgres_exceeds_budget_exit_3_entries_stay_pending(
    procs: list[Processor],
    stalled_pg: PostgresServer,
    redis_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    budget = 2.0
    database_url = stalled_pg.create_database()
    env = processor_env(
        redis_url,
        database_url,
        stream_key,
        tmp_path,
        SHUTDOWN_BUDGET_S=budget,
        REDIS_CONSUMER_NAME="staller",
    )
    work = Workload.make(20_000)
    ids = publish_all(sync_redis, stream_key, work.fields)
    id_to_key = dict(zip(ids, work.keys, strict=True))
    proc = _start(procs, env).wait_ready()
    wait_until(lambda: row_counts(database_url, work.prefix)[0] >= 2_000, 30, "2000 rows")
    rows_before = row_counts(database_url, work.prefix)[0]
    assert rows_before < len(ids) - 5_000, "too late: the stall must hit a drain with work"

    stalled_pg.pause()
    sent_at = proc.terminate()
    code = proc.wait(budget + 20)
    elapsed = time.monotonic() - sent_at

    assert code == exit_codes.SHUTDOWN_BUDGET_EXCEEDED, proc.tail()
    # Budget plus the shielded connection cleanup (at most ~1 s) and interpreter exit.
    assert elapsed < budget + 3, f"exit took {elapsed:.2f} s, budget {budget} s"
    [line] = proc.events("shutdown budget exceeded; unfinished entries stay pending")
    assert line["level"] == "error"
    pending = pending_ids(sync_redis, stream_key)
    assert pending, "the unfinished entries must stay pending"

    stalled_pg.resume()
    rows = row_keys(database_url, work.prefix)
    acked = {i for i in ids if id_key(i) <= id_key(last_delivered(sync_redis, stream_key))}
    acked -= pending
    # Acked means committed. (A pending entry may have a row too: the statement cut off
    # by the budget can still commit once PostgreSQL resumes; re-delivery absorbs it.)
    assert keys_of(acked, id_to_key) <= rows
    print(
        f"\nstalled drain: exit 3 in {elapsed:.2f} s (budget {budget} s);"
        f" {len(pending)} entries left pending, {len(acked)} acked"
    )

    _finish_and_check_exactly_once(procs, env, sync_redis, stream_key, database_url, work)


def test_sigterm_while_waiting_for_redis_at_start_exits_0_at_once(
    procs: list[Processor], fresh_database_url: str, tmp_path: Path
) -> None:
    """Nothing has been read before the pipeline runs: there is nothing to drain, so a
    signal during the start-up wait for a dependency must end it at once, with 0 (not
    the whole budget and then 3, "work left pending", when no work was taken)."""
    budget = 5.0
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = processor_env(
        nobody, fresh_database_url, "never:read", tmp_path, SHUTDOWN_BUDGET_S=budget
    )
    proc = _start(procs, env)
    proc.wait_log("redis unavailable at start", 30)

    sent_at = proc.terminate()
    code = proc.wait(budget + 5)
    elapsed = time.monotonic() - sent_at

    assert (code, elapsed < 2) == (exit_codes.OK, True), (
        f"exit {code} after {elapsed:.2f} s\n{proc.tail()}"
    )


def test_second_sigint_exits_130_at_once(
    procs: list[Processor],
    stalled_pg: PostgresServer,
    redis_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    database_url = stalled_pg.create_database()
    env = processor_env(redis_url, database_url, stream_key, tmp_path, SHUTDOWN_BUDGET_S=60)
    proc = _start(procs, env).wait_ready()
    stalled_pg.pause()
    # Work the writer cannot finish: the drain after the first SIGINT hangs on PostgreSQL.
    publish_all(sync_redis, stream_key, Workload.make(2_000).fields)
    wait_until(lambda: pending_count(sync_redis, stream_key) > 0, 10, "entries read")

    proc.interrupt()
    proc.wait_log("shutdown requested", 5)
    assert proc.alive
    second_at = proc.interrupt()
    code = proc.wait(5)
    elapsed = time.monotonic() - second_at

    assert code == exit_codes.INTERRUPTED, proc.tail()
    assert elapsed < 1.5, f"second SIGINT took {elapsed:.2f} s to exit"
    assert proc.events("second SIGINT: exiting now"), proc.tail()
    assert pending_count(sync_redis, stream_key) > 0
