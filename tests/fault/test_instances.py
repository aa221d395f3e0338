"""Many instances on one consumer group: fair split, crash takeover, one migration.

- Two or three ``processor run`` processes share a steady load, each within ±20% of an
  even share (measured from each process's ``processor_records_consumed_total``).
- ``kill -9`` of one instance under load loses nothing: the survivors claim its pending
  entries within ``CLAIM_THRESHOLD_MS`` + one ``CLAIM_INTERVAL_MS`` (plus slack for a busy
  2-core machine) and every record is stored exactly once.
- Instances started at the same moment on an empty database migrate it exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from processor import exit_codes
from tests.fault import (
    Workload,
    consumer_pending,
    pending_count,
    pending_ids,
    publish_all,
    row_counts,
    row_keys,
)
from tests.process import ProcessorFleet, fleet, processor_env
from tests.servers import wait_until

CONSUMED = "processor_records_consumed_total"

# End-to-end: every test here runs `processor run` subprocesses (the marker's meaning).
pytestmark = pytest.mark.slow


@pytest.fixture
def procs(
    fresh_database_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> Iterator[ProcessorFleet]:
    env = processor_env(redis_url, fresh_database_url, stream_key, tmp_path)
    with fleet(env) as processors:
        yield processors


def _publish_steadily(
    client: redis.Redis, stream: str, work: Workload, rate: float, tick_s: float = 0.002
) -> None:
    """Publish ``work`` at ``rate`` records/s, a few records per tick (pacing, not waiting).

    Small ticks, like ingestion's record-by-record XADDs: with 20 records per 10 ms tick,
    whichever consumer re-read first took most of each tick, and shares drifted ~±13%.
    """
    per_tick = max(1, round(rate * tick_s))
    start = time.monotonic()
    for tick, offset in enumerate(range(0, len(work.fields), per_tick)):
        publish_all(client, stream, work.fields[offset : offset + per_tick])
        ahead = start + (tick + 1) * tick_s - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


@pytest.mark.parametrize("instances", [2, 3])
def test_instances_share_a_steady_load_fairly(
    instances: int,
    procs: ProcessorFleet,
    fresh_database_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
) -> None:
    rate, seconds = 2_000, 30  # the issue: a fair share over a 30 s run
    running = [procs.start(f"fair-{i}") for i in range(instances)]
    for proc in running:
        proc.wait_ready()
    work = Workload.make(rate * seconds)

    started = time.monotonic()
    _publish_steadily(sync_redis, stream_key, work, rate)
    took = time.monotonic() - started
    wait_until(
        lambda: (
            row_counts(fresh_database_url, work.prefix)[0] == len(work.keys)
            and pending_count(sync_redis, stream_key) == 0
        ),
        30,
        "everything stored and acked",
    )

    consumed = {proc.name: proc.metric(CONSUMED) for proc in running}
    even = len(work.keys) / instances
    shares = {name: round(n / even, 3) for name, n in consumed.items()}
    print(f"\n{instances} instances, {len(work.keys)} records in {took:.1f} s: {consumed}")
    print(f"share of an even split: {shares}")
    assert sum(consumed.values()) == len(work.keys), consumed
    for name, share in shares.items():
        assert 0.8 <= share <= 1.2, f"{name} got {share:.0%} of an even share: {consumed}"
    for proc in running:
        assert proc.stop() == exit_codes.OK, proc.tail()


def test_kill_9_of_one_instance_loses_nothing(
    procs: ProcessorFleet,
    fresh_database_url: str,
    stream_key: str,
    sync_redis: redis.Redis,
) -> None:
    threshold_ms, interval_ms = 2_000, 500
    claim = {"CLAIM_THRESHOLD_MS": str(threshold_ms), "CLAIM_INTERVAL_MS": str(interval_ms)}
    victim, *survivors = [procs.start(f"crew-{i}", **claim) for i in range(3)]
    for proc in (victim, *survivors):
        proc.wait_ready()
    work = Workload.make(60_000)

    def holding() -> bool:
        return consumer_pending(sync_redis, stream_key, victim.name) >= 200

    # Published chunk by chunk, the victim killed as soon as it holds entries and the rest
    # published after: three instances can drain all 60,000 records between two polls
    # once publishing is over, and then the victim would die holding nothing.
    chunk = 2_000
    sent = 0
    while sent < len(work.fields) and not holding():
        publish_all(sync_redis, stream_key, work.fields[sent : sent + chunk])
        sent += chunk
    wait_until(holding, 30, "the victim to hold in-flight entries", 0.01)
    killed_at = victim.kill()
    publish_all(sync_redis, stream_key, work.fields[sent:])
    assert victim.wait(5) == -9
    orphaned = pending_ids(sync_redis, stream_key, consumer=victim.name)
    assert orphaned, "the victim must die holding entries"
    wait_until(
        lambda: consumer_pending(sync_redis, stream_key, victim.name) == 0,
        30,
        "the survivors to claim the victim's entries",
        0.02,
    )
    claimed_after = time.monotonic() - killed_at

    wait_until(
        lambda: (
            row_counts(fresh_database_url, work.prefix)[0] == len(work.keys)
            and pending_count(sync_redis, stream_key) == 0
        ),
        60,
        "every record stored and acked",
    )
    claimed = sum(proc.metric("processor_entries_claimed_total") for proc in survivors)
    total, distinct = row_counts(fresh_database_url, work.prefix)
    print(
        f"\nkilled holding {len(orphaned)} entries; claimed {claimed:.0f}"
        f" within {claimed_after:.2f} s (threshold {threshold_ms} ms, interval {interval_ms} ms)"
    )
    assert total == distinct == len(work.keys)
    assert row_keys(fresh_database_url, work.prefix) == set(work.keys)
    assert claimed >= len(orphaned)
    # Claimable threshold after the last delivery (<= the kill), seen by the next sweep;
    # 1.5 s of slack for three processes, Redis and PostgreSQL sharing 2 cores.
    assert claimed_after <= (threshold_ms + interval_ms) / 1000 + 1.5, claimed_after
    for proc in survivors:
        assert proc.stop() == exit_codes.OK, proc.tail()


def test_instances_starting_together_migrate_once(
    procs: ProcessorFleet, fresh_database_url: str
) -> None:
    pair = [procs.start(f"twin-{i}") for i in range(2)]  # back to back: same moment
    for proc in pair:
        proc.wait_ready()

    with psycopg.connect(fresh_database_url) as conn:
        versions = conn.execute(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        ).fetchall()
    assert versions, "no migration recorded"
    assert all(count == 1 for _, count in versions), versions
    applied = [line["applied"] for proc in pair for line in proc.events("migrations applied")]
    assert sorted(applied, key=len) == [[], [v for v, _ in versions]], applied
    assert len([line for p in pair for line in p.events("migration applied")]) == len(versions)
    for proc in pair:
        assert proc.readyz()[0] == 200
        assert proc.stop() == exit_codes.OK, proc.tail()
