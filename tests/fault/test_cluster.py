"""A real 3-node Redis Cluster with 16 hash-tagged shards, read by two ``processor run``.

The cluster is started by the test (three ``redis-server --cluster-enabled yes`` on free
ports, ``redis-cli --cluster create``), records are published with redis-py's
``RedisCluster`` to the shard ``shard_for`` names, and afterwards every record is one
row, every shard has nothing pending, poison sits in its own shard's DLQ (the script of
XADD dlq + XACK only works because ``<shard>:dlq`` shares the shard's slot), and
``processor status`` reports all 16 shards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processor.core.sharding import shard_for
from tests.fault import Workload, row_counts
from tests.process import clean_environ, fleet, processor_env
from tests.servers import RedisClusterServers, redis_cluster, wait_until

pytestmark = pytest.mark.slow

SHARDS = "telemetry:teltonika:{0..15}"
STREAMS = tuple(f"telemetry:teltonika:{{{k}}}" for k in range(16))


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    with redis_cluster() as servers:
        yield servers


@pytest.fixture
def client(cluster: RedisClusterServers) -> Iterator[redis.RedisCluster]:
    c = cluster.client()
    yield c
    c.close()


def _pending(client: redis.RedisCluster, stream: str) -> int:
    groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
    return int(groups["processor"]["pending"]) if "processor" in groups else -1


def _publish(client: redis.RedisCluster, work: Workload) -> dict[str, int]:
    per_shard: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    for (device_id, _), fields in zip(work.keys, work.fields, strict=True):
        shard = shard_for(device_id, STREAMS)
        pipe.xadd(shard, fields)  # type: ignore[arg-type]
        per_shard[shard] = per_shard.get(shard, 0) + 1
    pipe.execute()
    return per_shard


def test_sixteen_shards_on_a_three_node_cluster_land_exactly_once(
    cluster: RedisClusterServers,
    client: redis.RedisCluster,
    fresh_database_url: str,
    tmp_path: Path,
) -> None:
    slots = {client.keyslot(s) for s in STREAMS}
    nodes = {client.get_node_from_key(s).port for s in STREAMS}
    assert len(slots) == 16
    assert len(nodes) == 3, "the shards must spread over the three nodes"

    env = processor_env(cluster.url, fresh_database_url, SHARDS, tmp_path)
    with fleet(env) as procs:
        running = [procs.start(f"cluster-{i}") for i in range(2)]
        for proc in running:
            proc.wait_ready()
        work = Workload.make(6_000, devices=160)
        per_shard = _publish(client, work)
        assert set(per_shard) == set(STREAMS)
        _publish(client, Workload(work.prefix, work.keys[:500], work.fields[:500]))  # re-sent
        poison_shard = STREAMS[5]
        client.xadd(poison_shard, {b"payload": b"{not json"})

        def all_stored() -> bool:
            return row_counts(fresh_database_url, work.prefix)[1] == len(work.keys)

        wait_until(all_stored, 60, f"6000 rows\n{procs.dump()}")
        wait_until(lambda: all(_pending(client, s) == 0 for s in STREAMS), 30, "every shard acked")
        assert row_counts(fresh_database_url, work.prefix) == (6_000, 6_000)
        dlq = f"{poison_shard}:dlq"
        wait_until(lambda: client.xlen(dlq) == 1, 10, "poison dead-lettered")
        [(_, letter)] = client.xrange(dlq)
        assert letter[b"source_stream"] == poison_shard.encode()
        assert letter[b"error_kind"] == b"malformed_payload"
        assert sum(client.xlen(f"{s}:dlq") for s in STREAMS) == 1

        status = subprocess.run(
            [sys.executable, "-m", "processor", "status", "--json"],
            env={**clean_environ(), **env},
            cwd=os.getcwd(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        shards = json.loads(status.stdout)["shards"]
        assert shards["count"] == 16
        assert shards["pending"] == 0
        assert shards["length"] == 6_501
        assert shards["dlq_length"] == 1

        for proc in running:
            proc.terminate()
        for proc in running:
            assert proc.wait(15) == 0, procs.dump()
