"""Several stream shards on one Redis: one group over all, acked and dead-lettered per shard."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import attrs
import psycopg
import pytest
import redis
import trio

from processor import config
from processor.app import App
from processor.broadcast.tail import StreamTail
from processor.core.codec import encode
from processor.core.model import Position
from processor.core.redis_io import RedisStreams
from processor.core.sharding import shard_for
from processor.logs import make_logger
from tests.helpers import (
    count_rows,
    make_position,
    publish_fields,
    start_app,
    wait_for,
)
from tests.integration.test_operator_cli import Result, cli

SHARDS = 4


@pytest.fixture
def shard_settings(settings: config.Settings, sync_redis: redis.Redis) -> Iterator[config.Settings]:
    """The test's settings with ``<stream>:{0..3}`` as the telemetry stream (4 shards)."""
    loaded = config.load(
        {
            "REDIS_URL": settings.redis_url,
            "REDIS_TELEMETRY_STREAM": settings.telemetry_stream + ":{0..3}",
        }
    )
    sharded = attrs.evolve(
        settings,
        telemetry_streams=loaded.telemetry_streams,
        telemetry_stream=loaded.telemetry_stream,
        claim_threshold_ms=300,
        claim_interval_ms=100,
    )
    yield sharded
    sync_redis.delete(*sharded.telemetry_streams, *sharded.dlq_keys)


@pytest.fixture
async def app(shard_settings: config.Settings, nursery: trio.Nursery) -> AsyncIterator[App]:
    running = await start_app(nursery, shard_settings)
    yield running.app
    await running.stop()


def _publish_sharded(
    client: redis.Redis, streams: tuple[str, ...], positions: list[Position]
) -> dict[str, int]:
    """XADD each record to its device's shard (the ingestion contract); count per shard."""
    counts: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    for p in positions:
        shard = shard_for(p.device_id, streams)
        pipe.xadd(shard, encode(p))  # type: ignore[arg-type]
        counts[shard] = counts.get(shard, 0) + 1
    pipe.execute()
    return counts


def _all_acked(client: redis.Redis, streams: tuple[str, ...]) -> bool:
    """Every entry of every shard delivered (lag 0) and acked (pending 0).

    Pending alone is 0 before the first read too, so lag must be checked with it.
    """
    for stream in streams:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        group = groups.get("processor")
        if group is None or group["pending"] != 0 or group.get("lag") != 0:
            return False
    return True


def test_range_form_expands_to_hash_tagged_keys(shard_settings: config.Settings) -> None:
    base = shard_settings.telemetry_streams[0].removesuffix(":{0}")
    assert shard_settings.telemetry_streams == tuple(f"{base}:{{{k}}}" for k in range(SHARDS))
    assert shard_settings.telemetry_stream == f"{base}:{{0}}"
    assert shard_settings.dlq_for(f"{base}:{{2}}") == f"{base}:{{2}}:dlq"


async def test_records_on_every_shard_land_exactly_once_and_are_acked_per_shard(
    app: App, shard_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    streams = shard_settings.telemetry_streams
    prefix = f"S{uuid.uuid4().hex[:10]}"
    positions = [make_position(f"{prefix}-{d}", second=s) for d in range(40) for s in range(10)]
    counts = _publish_sharded(sync_redis, streams, positions)
    assert set(counts) == set(streams), "40 devices should cover all 4 shards"
    # Re-deliveries of a few records (same device, same shard): absorbed by the key.
    _publish_sharded(sync_redis, streams, positions[:15])

    await wait_for(lambda: _all_acked(sync_redis, streams), what="every shard acked")
    await wait_for(lambda: count_rows(shard_settings.postgres_url, prefix) == 400, what="rows")
    assert count_rows(shard_settings.postgres_url, prefix) == 400
    # Redis records an XACK before its reply reaches the acker, which counts on the reply:
    # the metric may trail what XINFO shows, so wait for it rather than read it once.
    await wait_for(lambda: app.metrics.acked._value.get() >= 415, what="415 acks counted")
    assert app.metrics.acked._value.get() == 415
    for stream in streams:
        assert sync_redis.xlen(stream) == counts[stream] + sum(
            1 for p in positions[:15] if shard_for(p.device_id, streams) == stream
        )
        groups = {g["name"].decode(): g for g in sync_redis.xinfo_groups(stream)}
        assert groups["processor"]["pending"] == 0
    # Per-device order: each device's rows came from one shard, in publish order.
    with psycopg.connect(shard_settings.postgres_url) as conn:
        rows = conn.execute(
            "SELECT device_id, count(*), max(ts) - min(ts) FROM positions"
            " WHERE device_id LIKE %s GROUP BY device_id",
            (prefix + "%",),
        ).fetchall()
    assert len(rows) == 40
    assert all(n == 10 and span == timedelta(seconds=9) for _, n, span in rows)


async def test_poison_goes_to_its_own_shards_dlq(
    app: App, shard_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    streams = shard_settings.telemetry_streams
    poison_shard = streams[2]
    ids = publish_fields(
        sync_redis,
        poison_shard,
        [{b"payload": b"{not json"}, {b"payload": json.dumps({"device_id": "bad id!"}).encode()}],
    )
    dlq = shard_settings.dlq_for(poison_shard)
    await wait_for(lambda: sync_redis.xlen(dlq) == 2, what="2 dead letters on shard 2's DLQ")
    await wait_for(lambda: _all_acked(sync_redis, streams), what="poison acked")
    letters = {f[b"source_id"].decode(): f for _, f in sync_redis.xrange(dlq)}
    assert set(letters) == set(ids)
    assert {f[b"source_stream"] for f in letters.values()} == {poison_shard.encode()}
    for other in streams:
        if other != poison_shard:
            assert sync_redis.xlen(shard_settings.dlq_for(other)) == 0


async def test_stranded_entries_are_claimed_on_every_shard(
    app: App, shard_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    streams = shard_settings.telemetry_streams
    prefix = f"C{uuid.uuid4().hex[:10]}"
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    for k, stream in enumerate(streams):
        pipe = sync_redis.pipeline(transaction=True)
        for s in range(5):
            pipe.xadd(stream, encode(make_position(f"{prefix}-{k}", second=s)))  # type: ignore[arg-type]
        pipe.xreadgroup("processor", ghost, {stream: ">"}, count=100)
        pipe.execute()
    await wait_for(lambda: count_rows(shard_settings.postgres_url, prefix) == 20, what="claimed")
    await wait_for(lambda: _all_acked(sync_redis, streams), what="claimed entries acked")
    assert app.metrics.claimed._value.get() == 20


async def test_group_stats_are_labelled_per_shard(
    app: App, shard_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    streams = shard_settings.telemetry_streams
    publish_fields(sync_redis, streams[1], [{b"payload": b"{not json"}])
    gauge = app.metrics.dlq_length_by_stream

    pending = app.metrics.pending_by_stream

    def sampled() -> bool:
        # Both in one sample: the router XADDs the letter before it XACKs the entry, so
        # a sample between the two sees the letter and the entry still pending.
        return gauge.labels(stream=streams[1])._value.get() == 1 and all(
            pending.labels(stream=stream)._value.get() == 0 for stream in streams
        )

    await wait_for(sampled, what="shard 1's DLQ length 1, nothing pending, sampled")
    for stream in streams:
        assert pending.labels(stream=stream)._value.get() == 0
        expected = 1 if stream == streams[1] else 0
        assert gauge.labels(stream=stream)._value.get() == expected


async def test_broadcast_tail_reads_every_shard_in_one_xread(
    shard_settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    streams = shard_settings.telemetry_streams
    for stream in streams:
        sync_redis.xadd(stream, encode(make_position("old", second=0)))  # type: ignore[arg-type]
    seen: list[str] = []
    client = await RedisStreams.connect(shard_settings.redis_url)
    try:
        async with trio.open_nursery() as nursery:
            tail = StreamTail(
                streams=client,
                keys=streams,
                count=100,
                block_ms=100,
                future_tolerance_s=600,
                publish=lambda burst: seen.extend(p.device_id for p, _ in burst) or 0,
                log=make_logger("warning"),
            )
            await nursery.start(tail.run)
            positions = [make_position(f"B{k}", second=1) for k in range(12)]
            _publish_sharded(sync_redis, streams, positions)
            await wait_for(lambda: len(seen) == 12, what="12 fixes from 4 shards")
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert sorted(seen) == sorted(p.device_id for p in positions)


async def test_operator_commands_see_every_shard(
    app: App, shard_settings: config.Settings, sync_redis: redis.Redis
) -> None:
    streams = shard_settings.telemetry_streams
    env = {"REDIS_TELEMETRY_STREAM": ",".join(streams)}
    publish_fields(sync_redis, streams[2], [{b"payload": b"{not json"}])
    dlq = shard_settings.dlq_for(streams[2])
    await wait_for(lambda: sync_redis.xlen(dlq) == 1, what="dead letter on shard 2")
    await wait_for(lambda: _all_acked(sync_redis, streams), what="acked")

    status = (
        await trio.to_thread.run_sync(lambda: cli(shard_settings, "status", "--json", **env))
    ).json()
    assert status["stream"]["key"] == streams[0]
    assert status["shards"]["count"] == SHARDS
    assert status["shards"]["dlq_length"] == 1
    assert [s["key"] for s in status["shards"]["streams"]] == list(streams)
    pending = (
        await trio.to_thread.run_sync(lambda: cli(shard_settings, "pending", "--json", **env))
    ).json()
    assert pending["pending"] == 0

    def dlq_list(*args: str) -> Result:
        return cli(shard_settings, "dlq", "list", "--json", *args, **env)

    listed = (await trio.to_thread.run_sync(dlq_list, "--shard", "2")).json()
    assert listed["dlq"] == dlq
    assert [e["source_stream"] for e in listed["entries"]] == [streams[2]]
    by_key = (await trio.to_thread.run_sync(dlq_list, "--shard", streams[2])).json()
    assert by_key["entries"] == listed["entries"]
    assert (await trio.to_thread.run_sync(dlq_list)).json()["entries"] == []
    wrong = await trio.to_thread.run_sync(dlq_list, "--shard", "9")
    assert wrong.code == 2
    assert "--shard '9'" in wrong.stderr
